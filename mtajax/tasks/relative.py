"""Relative performance, ARP (paper Eq. 10) and attack transferability (paper Eq. 11).

For each metric j of task t with clean value m and attacked value m' (spec §6.3):
``rel_j = (m' - m) / m`` if higher is better else ``(m - m') / m``; ``task_acc_t = mean_j rel_j``;
``avg_acc = mean_t task_acc_t``. ARP = ``-100 * avg_acc`` (per task: ``-100 * task_acc_t``), so a
stronger attack has a higher ARP. ``reference_rounding=True`` (the default) rounds like the reference's CSV
(spec Q22): metrics to 4 decimals, ``task_acc`` to 6, ``avg_acc`` to 4.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

import numpy as np

from mtajax.tasks import base

Metrics = Mapping[str, Mapping[str, float]]


class Arp(NamedTuple):
  """ARP in percent: ``total`` (paper Eq. 10) and ``per_task`` (paper "ARP-x", Fig. 1)."""
  total: float
  per_task: dict[str, float]


def _value(metrics: Metrics, task: str, metric: str, which: str) -> float:
  try:
    value = float(metrics[task][metric])
  except KeyError:
    raise ValueError(f"{which} metrics lack {task!r}/{metric!r}; pass the dict returned by "
                     f"mtajax.tasks.metrics.compute.") from None
  if not np.isfinite(value):
    raise ValueError(f"{which} metric {task!r}/{metric!r} is {value}; it must be finite.")
  return value


def relative_performance(clean: Metrics, attacked: Metrics, tasks: Sequence[base.Task], *,
                         reference_rounding: bool = True) -> tuple[dict[str, float], float]:
  """Per-task ``task_acc`` and ``avg_acc`` of ``attacked`` relative to ``clean`` (negative = worse).

  Metrics are looked up as ``metrics[task.name][metric]`` for every metric in ``task.metrics``
  (other keys such as ``'loss'`` are ignored).
  """
  if not tasks:
    raise ValueError("relative_performance needs at least one task.")
  task_acc = {}
  for task in tasks:
    rels = []
    for metric, higher_is_better in task.metrics.items():
      m = _value(clean, task.name, metric, "clean")
      m_att = _value(attacked, task.name, metric, "attacked")
      if reference_rounding:
        m, m_att = round(m, 4), round(m_att, 4)
      if m == 0:
        raise ValueError(f"Clean {task.name!r}/{metric!r} is 0, so its relative change is "
                         f"undefined; evaluate on data where the metric is non-zero.")
      rels.append((m_att - m) / m if higher_is_better else (m - m_att) / m)
    acc = float(np.mean(rels))
    task_acc[task.name] = round(acc, 6) if reference_rounding else acc
  avg = float(np.mean(list(task_acc.values())))
  return task_acc, round(avg, 4) if reference_rounding else avg


def arp(clean: Metrics, attacked: Metrics, tasks: Sequence[base.Task], *,
        reference_rounding: bool = True) -> Arp:
  """ARP of an attack (paper Eq. 10): ``-100 * avg_acc``, and per task ``-100 * task_acc``.

  With ``clean`` = the model trained without adversarial training and ``attacked`` = the clean
  metrics of an adversarially trained model, this gives the ARP columns of paper Tables 13/14
  (spec §6.5): the accuracy cost of adversarial training.
  """
  task_acc, avg = relative_performance(clean, attacked, tasks,
                                       reference_rounding=reference_rounding)
  return Arp(total=0.0 - 100 * avg,
             per_task={name: 0.0 - 100 * acc for name, acc in task_acc.items()})


def relative_loss(clean: Mapping[str, float], attacked: Mapping[str, float], *,
                  reference_rounding: bool = True) -> tuple[dict[str, float], float]:
  """Per-task ``(loss - loss') / loss`` and its mean: the reference CSV's loss columns (§6.3)."""
  if not clean or set(clean) != set(attacked):
    raise ValueError(f"clean and attacked losses must name the same tasks, got {sorted(clean)} "
                     f"and {sorted(attacked)}.")
  rel = {}
  for name, loss in clean.items():
    if not loss or not np.isfinite(loss) or not np.isfinite(attacked[name]):
      raise ValueError(f"Loss of {name!r} must be finite and the clean one non-zero, got "
                       f"{loss} and {attacked[name]}.")
    value = (loss - attacked[name]) / loss
    rel[name] = round(value, 6) if reference_rounding else value
  avg = float(np.mean(list(rel.values())))
  return rel, round(avg, 4) if reference_rounding else avg


def transferability(per_task_arp: Mapping[str, float], attacked_task: str) -> float:
  """Transferability of attack Single-x (paper Eq. 11): ``mean_{y != x} ARP-y / ARP-x``.

  Args:
    per_task_arp: ``Arp.per_task`` of the Single-x attack on an n-task model (n >= 2).
    attacked_task: x, the task the attack targets.
  """
  if attacked_task not in per_task_arp or len(per_task_arp) < 2:
    raise ValueError(f"per_task_arp needs {attacked_task!r} and at least one other task, got "
                     f"{sorted(per_task_arp)}.")
  target = float(per_task_arp[attacked_task])
  if target == 0 or not np.isfinite(target):
    raise ValueError(f"ARP-{attacked_task} is {target}; transferability divides by it, so it must "
                     f"be finite and non-zero.")
  others = [float(v) for k, v in per_task_arp.items() if k != attacked_task]
  return float(np.mean(others)) / target
