"""Clean and attacked evaluation of a multi-task model over a dataset (reference-spec §6.1).

For every batch: (optionally) attack it, predict, feed the task metrics, and record the per-task
batch losses (the reference's Base ``'pooled'`` criterion). One jitted step per
(model, attack, direction, number of steps); ε is traced, so an ε sweep compiles once.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mtajax import attacks
from mtajax import directions as directions_lib
from mtajax import parallel
from mtajax import tasks as tasks_lib


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """Dataset-level results: ``metrics[task][metric]`` and ``losses[task]`` (mean batch loss)."""
  metrics: dict[str, dict[str, float]]
  losses: dict[str, float]


@dataclasses.dataclass(frozen=True)
class AttackSpec:
  """What to run on every batch: a base attack, a direction and the attack's static options.

  ε is not part of it: it is traced, so one compiled step serves a whole ε sweep.
  """
  attack: str
  direction: directions_lib.Direction
  num_steps: int = 10
  options: tuple[tuple[str, Any], ...] = ()
  attack_loss: str = "default"  # a name of mtajax.tasks.attack_losses

  def run(self, loss_fn, x, batch, bounds, eps, baselines):
    kwargs = dict(self.options)
    if self.attack == "fgsm":  # One step: no loop to size or unroll.
      kwargs.pop("unroll", None)
    else:
      kwargs["num_steps"] = self.num_steps
    if self.attack == "apgd":
      kwargs["baselines"] = baselines
    return attacks.by_name(self.attack)(loss_fn, x, batch, direction=self.direction, eps=eps,
                                        bounds=bounds, **kwargs).x_adv


@functools.partial(jax.jit, static_argnames=("predict", "tasks", "spec"))
def _step(state, metric_state, batch, eps, bounds, baselines, *, predict, tasks, spec):
  forward = functools.partial(predict, state)
  x = batch["image"]
  if spec is not None:
    loss_fn = tasks_lib.make_loss_fn(forward, tasks, spec.direction.reduction,
                                     attack_loss=spec.attack_loss)
    x = jax.lax.stop_gradient(spec.run(loss_fn, x, batch, bounds, eps, baselines))
  preds = forward(x)
  metric_state = tasks_lib.metrics.update(tasks, metric_state, preds, batch)
  losses = {t.name: jnp.mean(t.loss(preds[t.name], batch, "pooled")) for t in tasks}
  return metric_state, losses


def evaluate(predict: Callable[[Any, jax.Array], Mapping[str, jax.Array]], state: Any,
             batches: Iterable[Mapping[str, np.ndarray]], tasks: Sequence[tasks_lib.Task], *,
             spec: AttackSpec | None = None, eps: float = 0.0,
             bounds: tuple[Any, Any] | None = None,
             baselines: Mapping[str, float] | None = None,
             mesh: jax.sharding.Mesh | None = None) -> Evaluation:
  """Evaluates ``predict(state, x)`` on ``batches``, attacked by ``spec`` if given.

  Args:
    predict: pure eval-mode forward pass (``mtajax.models.pure_predict``).
    state: its model state.
    batches: batches in the CONVENTIONS.md format.
    tasks: the tasks to score.
    spec: the attack to run on every batch; None evaluates clean inputs.
    eps: the attack's L∞ radius (traced).
    bounds: per-channel input box, needed with ``spec``.
    baselines: per-task clean losses for the GB-MTA APGD objective (the reference passes the
      clean evaluation's ``losses``, Q10).
    mesh: run data-parallel over this ``mtajax.parallel.make_mesh`` (batches sharded, the rest
      replicated; with several processes ``batches`` are this process's slices); None: default
      device.
  """
  tasks = tuple(tasks)
  if spec is not None and bounds is None:
    raise ValueError("an attacked evaluation needs the input bounds; pass bounds=(low, high).")
  metric_state = tasks_lib.metrics.init(tasks)
  eps = jnp.asarray(eps, jnp.float32)
  if baselines is not None:
    baselines = {t: jnp.asarray(v, jnp.float32) for t, v in baselines.items()}
  if mesh is not None:
    state, metric_state, eps, bounds, baselines = parallel.replicate(
        (state, metric_state, eps, bounds, baselines), mesh)
  sums, count = None, 0
  for batch in batches:
    if mesh is None:
      batch = {k: jnp.asarray(v) for k, v in batch.items()}
    else:
      batch = parallel.shard_batch(batch, mesh)
    metric_state, losses = _step(state, metric_state, batch, eps, bounds, baselines,
                                 predict=predict, tasks=tasks, spec=spec)
    sums = losses if sums is None else jax.tree.map(jnp.add, sums, losses)
    count += 1
  if count == 0:
    raise ValueError("evaluate() got no batches; check the dataset split and batch size.")
  sums, metric_state = parallel.to_host((sums, metric_state))
  losses = {t: float(v) / count for t, v in sums.items()}
  bad = [t for t, v in losses.items() if not np.isfinite(v)]
  if bad:
    raise ValueError(f"non-finite mean loss for tasks {bad}; the model or data produce NaN/inf.")
  return Evaluation(tasks_lib.metrics.compute(tasks, metric_state), losses)
