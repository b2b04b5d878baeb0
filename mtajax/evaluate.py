"""Clean and attacked evaluation of a multi-task model over a dataset (reference-spec §6.1).

For every batch: (optionally) attack it, predict, feed the task metrics, and record the per-task
batch losses (the reference's Base ``'pooled'`` criterion). One jitted step per
(model, attack, direction, number of steps); ε is traced, so an ε sweep compiles once.

Batches may carry ``example_weight`` (the padded last batch of an evaluation loader): padding
examples are left out of the metrics and of the batch losses. The per-batch metric states and the
Angle Median's per-pixel angles go to the host (one batch behind the device), where
:class:`mtajax.tasks.metrics.Accumulator` sums them in int64 / float64.
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
from mtajax.tasks import base


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

  def run(self, loss_fn, x, batch, bounds, eps, baselines):
    kwargs = dict(self.options)
    if self.attack == "fgsm":  # One step: no loop to size or unroll.
      kwargs.pop("unroll", None)
    else:
      kwargs["num_steps"] = self.num_steps
    if self.attack == "apgd":
      kwargs["baselines"] = baselines
      kwargs["example_weight"] = batch.get("example_weight")
    return attacks.by_name(self.attack)(loss_fn, x, batch, direction=self.direction, eps=eps,
                                        bounds=bounds, **kwargs).x_adv


@functools.partial(jax.jit, static_argnames=("predict", "tasks", "spec"))
def _step(state, batch, eps, bounds, baselines, *, predict, tasks, spec):
  forward = functools.partial(predict, state)
  x = batch["image"]
  if spec is not None:
    loss_fn = tasks_lib.make_loss_fn(forward, tasks, spec.direction.reduction)
    x = jax.lax.stop_gradient(spec.run(loss_fn, x, batch, bounds, eps, baselines))
  preds = forward(x)
  update = tasks_lib.metrics.update(tasks, tasks_lib.metrics.init(tasks), preds, batch)
  samples = tasks_lib.metrics.samples(tasks, preds, batch)
  losses = {t.name: base.batch_mean(t.loss(preds[t.name], batch, "pooled"), batch) for t in tasks}
  return update, samples, losses


def evaluate(predict: Callable[[Any, jax.Array], Mapping[str, jax.Array]], state: Any,
             batches: Iterable[Mapping[str, np.ndarray]], tasks: Sequence[tasks_lib.Task], *,
             spec: AttackSpec | None = None, eps: float = 0.0,
             bounds: tuple[Any, Any] | None = None,
             baselines: Mapping[str, float] | None = None,
             mesh: jax.sharding.Mesh | None = None,
             sample_budget: int = tasks_lib.metrics.SAMPLE_BUDGET) -> Evaluation:
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
    sample_budget: per-pixel values of an exact metric (the Angle Median's angles) kept on the
      host; beyond it that metric comes from its histogram (``Normal.histogram_bins``).
  """
  tasks = tuple(tasks)
  if spec is not None and bounds is None:
    raise ValueError("an attacked evaluation needs the input bounds; pass bounds=(low, high).")
  eps = jnp.asarray(eps, jnp.float32)
  if baselines is not None:
    baselines = {t: jnp.asarray(v, jnp.float32) for t, v in baselines.items()}
  if mesh is not None:
    state, eps, bounds, baselines = parallel.replicate((state, eps, bounds, baselines), mesh)
  accumulator = tasks_lib.metrics.Accumulator(tasks, sample_budget)
  sums = {t.name: 0.0 for t in tasks}
  count, pending = 0, None

  def absorb(out):  # On the host, while the device runs the next batch.
    update, samples, losses = parallel.to_host(out)
    accumulator.add(update, samples)
    for t, v in losses.items():
      sums[t] += float(v)

  for batch in batches:
    if mesh is None:
      batch = {k: jnp.asarray(v) for k, v in batch.items()}
    else:
      batch = parallel.shard_batch(batch, mesh)
    out = _step(state, batch, eps, bounds, baselines, predict=predict, tasks=tasks, spec=spec)
    if pending is not None:
      absorb(pending)
    pending, count = out, count + 1
  if count == 0:
    raise ValueError("evaluate() got no batches; check the dataset split and batch size.")
  absorb(pending)
  # The reference's dataset loss: the unweighted mean of the batch losses (Q16).
  losses = {t: v / count for t, v in sums.items()}
  bad = [t for t, v in losses.items() if not np.isfinite(v)]
  if bad:
    raise ValueError(f"non-finite mean loss for tasks {bad}; the model or data produce NaN/inf.")
  return Evaluation(accumulator.compute(), losses)
