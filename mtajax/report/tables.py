"""Markdown tables in the layout of paper Tables 1/2, 3 and 12, and the per-task ARPs behind Fig. 1.

Each table is a pure function of a list of records of one (dataset, backbone, tasks) group
(``records.groups``); it raises ``records.MissingData`` when the records hold nothing for it.
"""

from __future__ import annotations

import functools
from typing import Iterable, Sequence

import ml_collections
import numpy as np

from mtajax import tasks as tasks_lib
from mtajax.models import layouts
from mtajax.report import records as rec_lib
from mtajax.report.records import Record
from mtajax.train import assemble


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  """A pipe table; the first column left-aligned, the others right-aligned."""
  align = [":--"] + ["--:"] * (len(header) - 1)
  lines = [header, align] + [list(r) for r in rows]
  return "\n".join("| " + " | ".join(cells) + " |" for cells in lines) + "\n"


def format_cells(values: Sequence[float | None]) -> list[str]:
  """Formats values with 2 decimals and bolds the largest (every tie at 2 decimals)."""
  shown = [rec_lib.fmt(v) for v in values]
  present = [round(v, 2) for v in values if v is not None]
  if not present:
    return shown
  best = max(present)
  return [f"**{s}**" if v is not None and round(v, 2) == best else s
          for s, v in zip(shown, values)]


def _tasks(records: Sequence[Record]) -> tuple[str, ...]:
  attacked = rec_lib.attacked(records)
  if not attacked:
    raise rec_lib.MissingData("no attacked records")
  return tuple(attacked[0]["tasks"])


def _arp(records: Sequence[Record], model: str, attack: str, direction: str,
         eps: float) -> float | None:
  found = rec_lib.lookup(records, model, attack, direction, eps)
  return None if found is None else float(found["arp"])


def robust_arp(robust: Sequence[Record], model: str, eps: float) -> float | None:
  """The robust ARP of ``model`` at ``eps`` (the last record wins), or None."""
  found = [r for r in robust if r["model"] == model and rec_lib.same_eps(r["eps"], eps)]
  return float(found[-1]["arp"]) if found else None


def arp_table(records: Sequence[Record], eps: float | None = None,
              robust: Sequence[Record] = ()) -> str:
  """Paper Tables 1/2: ARP of every clean-trained model × base attack × direction at one ε.

  Rows are models by sharing level (high → low); Single-x columns are named by the task, as in
  the paper; the strongest direction per (model, attack) is bold. With ``robust`` records, a last
  column **Robust ARP** gives each model's robust evaluation.
  """
  eps = rec_lib.default_eps(records) if eps is None else eps
  at_eps = rec_lib.select(rec_lib.attacked(records), eps=eps, adv_training=rec_lib.NO_AT)
  if not at_eps:
    raise rec_lib.MissingData(f"no attacked clean-trained models at ε={eps:g}")
  tasks = _tasks(at_eps)
  columns = [(a, d) for a in rec_lib.attacks_present(at_eps)
             for d in rec_lib.directions_present(rec_lib.select(at_eps, attack=a), tasks)]
  header = ["Model", "Sharing"] + [
      f"{rec_lib.attack_label(a)} {rec_lib.direction_label(d, short=True)}" for a, d in columns]
  header += ["**Robust ARP**"] if robust else []
  rows = []
  for info in rec_lib.models(at_eps):
    row = [info.label, f"{info.sharing_level}L"]
    for attack in dict.fromkeys(a for a, _ in columns):
      row += format_cells([_arp(at_eps, info.model, attack, d, eps)
                           for a, d in columns if a == attack])
    if robust:
      row.append(rec_lib.fmt(robust_arp(robust, info.model, eps)))
    rows.append(row)
  return markdown(header, rows)


def _same_architecture(a: rec_lib.ModelInfo, b: rec_lib.ModelInfo) -> bool:
  return a.tasks == b.tasks and layouts.parse_layout(a.layout) == layouts.parse_layout(b.layout)


def at_variants(records: Sequence[Record], model: str | None = None
                ) -> tuple[rec_lib.ModelInfo, list[rec_lib.ModelInfo]]:
  """A clean-trained model and its adversarially trained variants (same layout and tasks).

  ``model`` defaults to the first clean-trained model (highest sharing level) that has variants.
  """
  trained = rec_lib.models(records, clean_trained=False)
  for info in rec_lib.models(records):
    if model is not None and info.model != model:
      continue
    variants = [v for v in trained if _same_architecture(v, info)]
    if variants:
      return info, sorted(variants, key=lambda v: v.adv_training)
  which = "any clean-trained model" if model is None else f"model {model!r}"
  raise rec_lib.MissingData(f"no adversarially trained variants of {which}")


def at_table(records: Sequence[Record], model: str | None = None, attack: str = "pgd",
             eps: float | None = None) -> str:
  """Paper Table 3: ARP of one attack's directions on a model's adversarially trained variants.

  The first row, "w/o AT", is the clean-trained model; the strongest direction per row is bold.
  """
  base, variants = at_variants(records, model)
  eps = rec_lib.default_eps(records) if eps is None else eps
  at_eps = rec_lib.select(records, attack=attack, eps=eps)
  directions = rec_lib.directions_present(at_eps, base.tasks)
  if not directions:
    raise rec_lib.MissingData(f"no {rec_lib.attack_label(attack)} records at ε={eps:g}")
  header = ["Adv. Train"] + [rec_lib.direction_label(d) for d in directions]
  rows = []
  for info in [base] + variants:
    rows.append([rec_lib.adv_training_label(info.adv_training)] +
                format_cells([_arp(at_eps, info.model, attack, d, eps) for d in directions]))
  return markdown(header, rows)


def transferabilities(records: Sequence[Record], attack: str, eps: float
                      ) -> dict[str, dict[str, float | None]]:
  """Paper Eq. 11 of every Single-x record: ``{model: {x: TR}}`` for clean-trained models.

  TR is None where ARP-x is 0 (Eq. 11 divides by it).
  """
  out: dict[str, dict[str, float | None]] = {}
  for rec in rec_lib.select(records, attack=attack, eps=eps, adv_training=rec_lib.NO_AT):
    task = rec_lib.single_task(rec["direction"])
    if task is None:
      continue
    per_task = rec["arp_per_task"]
    value = (None if float(per_task[task]) == 0
             else tasks_lib.transferability(per_task, task))
    out.setdefault(rec["model"], {})[task] = value
  return out


def transfer_by_level(records: Sequence[Record], attack: str, eps: float
                      ) -> dict[str, dict[int, float]]:
  """``{x: {sharing level: mean TR of Single-x over that level's models}}`` (None TRs skipped)."""
  levels = {m.model: m.sharing_level for m in rec_lib.models(records)}
  sums: dict[str, dict[int, list[float]]] = {}
  for model, per_task in transferabilities(records, attack, eps).items():
    for task, value in per_task.items():
      if value is not None:
        sums.setdefault(task, {}).setdefault(levels[model], []).append(value)
  return {t: {lvl: float(np.mean(v)) for lvl, v in sorted(by.items())} for t, by in sums.items()}


def transfer_table(records: Sequence[Record], attack: str | None = None,
                   eps: float | None = None) -> str:
  """Paper Table 12: transferability of each Single-x attack, models by sharing level."""
  eps = rec_lib.default_eps(records) if eps is None else eps
  attack = rec_lib.transfer_attack(records, eps, attack)
  values = transferabilities(records, attack, eps)
  tasks = _tasks(records)
  attacked_tasks = [t for t in tasks if any(t in v for v in values.values())]
  header = ["Model", "Sharing"] + [rec_lib.direction_label(f"single_{t}") for t in attacked_tasks]
  rows = []
  for info in rec_lib.models(records):
    if info.model in values:
      tr = values[info.model]
      rows.append([info.label, f"{info.sharing_level}L"] +
                  [rec_lib.fmt(tr.get(t)) for t in attacked_tasks])
  return markdown(header, rows)


def default_model(records: Sequence[Record], attack: str, eps: float) -> str:
  """The first clean-trained model (highest sharing level) with records of ``attack`` at ε."""
  for info in rec_lib.models(records):
    if rec_lib.select(records, model=info.model, attack=attack, eps=eps):
      return info.model
  raise rec_lib.MissingData(f"no clean-trained model has {rec_lib.attack_label(attack)} records "
                            f"at ε={eps:g}")


def per_task_defaults(records: Sequence[Record], model: str | None, attack: str | None,
                      eps: float | None) -> tuple[str, str, float]:
  """Fills in Fig. 1's defaults: ε as ``default_eps``, APGD (as the paper) else the first attack,
  the first clean-trained model."""
  eps = rec_lib.default_eps(records) if eps is None else eps
  if attack is None:
    present = rec_lib.attacks_present(rec_lib.select(records, eps=eps))
    if not present:
      raise rec_lib.MissingData(f"no attacked records at ε={eps:g}")
    attack = "apgd" if "apgd" in present else present[0]
  model = default_model(records, attack, eps) if model is None else model
  return model, attack, eps


def per_task_table(records: Sequence[Record], model: str | None = None,
                   attack: str | None = None, eps: float | None = None) -> str:
  """ARP-x of every task (and the ARP) per direction of one model and attack (numbers of Fig. 1).

  The largest value of each column is bold.
  """
  model, attack, eps = per_task_defaults(records, model, attack, eps)
  chosen = rec_lib.select(records, model=model, attack=attack, eps=eps)
  if not chosen:
    raise rec_lib.MissingData(f"no {rec_lib.attack_label(attack)} records of {model!r} at "
                              f"ε={eps:g}")
  tasks = _tasks(chosen)
  directions = rec_lib.directions_present(chosen, tasks)
  cells = []
  for d in directions:
    rec = rec_lib.lookup(chosen, model, attack, d, eps)
    cells.append([float(rec["arp_per_task"][t]) for t in tasks] + [float(rec["arp"])])
  columns = [format_cells(list(col)) for col in zip(*cells)]
  header = ["Direction"] + [f"ARP-{rec_lib.task_label(t)}" for t in tasks] + ["ARP"]
  rows = [[rec_lib.direction_label(d)] + [col[i] for col in columns]
          for i, d in enumerate(directions)]
  return markdown(header, rows)


@functools.cache
def _declared_metrics(dataset: str, task: str) -> tuple[str, ...]:
  """The metric names ``Task.metrics`` declares for ``task`` of ``dataset`` (() if unknown)."""
  config = ml_collections.ConfigDict(
      {"dataset": dataset, "tasks": (task,), "metric_definition": "reference"})
  try:
    return tuple(assemble.make_tasks(config)[0].metrics)
  except ValueError:  # A dataset or task of hand-made records.
    return ()


def metric_order(dataset: str, task: str, names: Iterable[str]) -> list[str]:
  """``names`` in the task's declared order (others after it, by name): never the records' key
  order, which a reload from results.jsonl sorts."""
  declared = _declared_metrics(dataset, task)
  return sorted(names, key=lambda m: (declared.index(m) if m in declared else len(declared), m))


def clean_table(records: Sequence[Record]) -> str:
  """The clean metrics of every clean-trained model (what the attacks start from), one row each."""
  clean = {r["model"]: r for r in records if r["attack"] == "clean"}
  infos = [m for m in rec_lib.models(records) if m.model in clean]
  if not infos:
    raise rec_lib.MissingData("no clean records")
  first = clean[infos[0].model]
  columns = [(t, m) for t in infos[0].tasks
             for m in metric_order(first.get("dataset", ""), t, first["metrics"].get(t, {}))]
  if not columns:
    raise rec_lib.MissingData("the clean records hold no metrics")
  header = ["Model", "Sharing", "Train steps"] + [
      f"{rec_lib.task_label(t)} {m}" for t, m in columns]
  rows = [[m.label, f"{m.sharing_level}L", str(clean[m.model].get("train_steps", "–"))] + [
      rec_lib.fmt(clean[m.model]["metrics"].get(t, {}).get(name)) for t, name in columns]
      for m in infos]
  return markdown(header, rows)
