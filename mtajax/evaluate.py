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

from mtajax import dispatch
from mtajax import parallel
from mtajax import platform
from mtajax import tasks as tasks_lib
from mtajax.attacks import loop as loop_lib
from mtajax.attacks.spec import Attack
from mtajax.directions import Switched, switchable, switched  # noqa: F401  (re-exported)
from mtajax.tasks import base


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """Dataset-level results: ``metrics[task][metric]`` and ``losses[task]`` (mean batch loss)."""
  metrics: dict[str, dict[str, float]]
  losses: dict[str, float]


def _attack(state, batch, eps, bounds, baselines, index, *, predict, tasks, spec, loop):
  loss_fn = spec.loss_fn(functools.partial(predict, state), tasks)
  result = spec(loss_fn, batch["image"], batch, eps=eps, bounds=bounds, baselines=baselines,
                example_weight=batch.get("example_weight"), index=index, loop=loop)
  return jax.lax.stop_gradient(result.x_adv)


def _step(state, batch, eps, bounds, baselines, index, *, predict, tasks, spec, loop):
  x = batch["image"] if spec is None else _attack(state, batch, eps, bounds, baselines, index,
                                                  predict=predict, tasks=tasks, spec=spec,
                                                  loop=loop)
  preds = predict(state, x)
  update = tasks_lib.metrics.update(tasks, tasks_lib.metrics.init(tasks), preds, batch)
  samples = tasks_lib.metrics.samples(tasks, preds, batch)
  losses = {t.name: base.batch_mean(t.loss(preds[t.name], batch, "pooled"), batch) for t in tasks}
  return update, samples, losses


_STATIC = ("predict", "tasks", "spec", "loop")
_compiled = dispatch.jit(_step, static_argnames=_STATIC)
_jitted_attack = dispatch.jit(_attack, static_argnames=_STATIC)


def attack_images(predict, state, batch, eps, bounds, baselines, index, *, tasks, spec: Attack,
                  loop: loop_lib.Loop) -> jax.Array:
  """``spec``'s attacked images of one (placed) batch: one program with a scan loop; with the
  Python loop, its programs (run from here) placed like the batch's images."""
  if loop != "python":
    return _jitted_attack(state, batch, eps, bounds, baselines, index, predict=predict,
                          tasks=tasks, spec=spec, loop=loop)
  return parallel.placed_like(
      _attack(state, batch, eps, bounds, baselines, index, predict=predict, tasks=tasks,
              spec=spec, loop=loop), batch["image"])


def _placed(state, eps, bounds, baselines, direction_index, mesh):
  """The evaluation's traced inputs as arrays, replicated over ``mesh`` (if any)."""
  index = None if direction_index is None else jnp.asarray(direction_index, jnp.int32)
  eps = jnp.asarray(eps, jnp.float32)
  if baselines is not None:
    baselines = {t: jnp.asarray(v, jnp.float32) for t, v in baselines.items()}
  if mesh is None:
    return state, eps, bounds, baselines, index
  return parallel.replicate((state, eps, bounds, baselines, index), mesh)


def _on(batch: Mapping[str, Any], mesh: jax.sharding.Mesh | None) -> dict[str, jax.Array]:
  if mesh is None:
    return {k: jnp.asarray(v) for k, v in batch.items()}
  return parallel.shard_batch(batch, mesh)


def attack_batch(predict: Callable[[Any, jax.Array], Mapping[str, jax.Array]], state: Any,
                 batch: Mapping[str, Any], tasks: Sequence[tasks_lib.Task], *, spec: Attack,
                 eps: float, bounds: tuple[Any, Any],
                 baselines: Mapping[str, float] | None = None,
                 direction_index: int | None = None,
                 mesh: jax.sharding.Mesh | None = None,
                 loop: loop_lib.Loop | None = None) -> jax.Array:
  """``spec``'s attacked images of one batch (arguments as in :func:`evaluate`); with the Python
  loop, the programs :func:`evaluate` runs, compiled once for both."""
  state, eps, bounds, baselines, index = _placed(state, eps, bounds, baselines, direction_index,
                                                 mesh)
  return attack_images(predict, state, _on(batch, mesh), eps, bounds, baselines, index,
                       tasks=tuple(tasks), spec=spec, loop=_loop(loop))


def _loop(loop: loop_lib.Loop | None) -> loop_lib.Loop:
  return platform.evaluation_loop() if loop is None else loop_lib.resolve(loop)


def evaluate(predict: Callable[[Any, jax.Array], Mapping[str, jax.Array]], state: Any,
             batches: Iterable[Mapping[str, np.ndarray]], tasks: Sequence[tasks_lib.Task], *,
             spec: Attack | None = None, eps: float = 0.0,
             bounds: tuple[Any, Any] | None = None,
             baselines: Mapping[str, float] | None = None,
             direction_index: int | None = None,
             mesh: jax.sharding.Mesh | None = None,
             sample_budget: int = tasks_lib.metrics.SAMPLE_BUDGET,
             loop: loop_lib.Loop | None = None) -> Evaluation:
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
    direction_index: with a :class:`Switched` ``spec.direction``, which of its choices to run
      (traced: every choice reuses one compiled step).
    mesh: run data-parallel over this ``mtajax.parallel.make_mesh`` (batches sharded, the rest
      replicated; with several processes ``batches`` are this process's slices); None: default
      device.
    sample_budget: per-pixel values of an exact metric (the Angle Median's angles) kept on the
      host; beyond it that metric comes from its histogram (``Normal.histogram_bins``).
    loop: how the attack's iterations run (:mod:`mtajax.attacks.loop`); None: the platform's
      default for evaluations (:func:`mtajax.platform.evaluation_loop`).
  """
  tasks = tuple(tasks)
  if spec is not None and bounds is None:
    raise ValueError("an attacked evaluation needs the input bounds; pass bounds=(low, high).")
  if isinstance(spec and spec.direction, Switched) != (direction_index is not None):
    raise ValueError("direction_index goes with a Switched spec.direction (and only with it); "
                     "pass both or neither.")
  state, eps, bounds, baselines, index = _placed(state, eps, bounds, baselines, direction_index,
                                                 mesh)
  loop = _loop(loop)
  hosted = spec is not None and loop == "python"
  accumulator = tasks_lib.metrics.Accumulator(tasks, sample_budget)
  sums = {t.name: 0.0 for t in tasks}
  count, pending = 0, None

  def absorb(out):  # On the host, while the device runs the next batch.
    update, samples, losses = parallel.to_host(out)
    accumulator.add(update, samples)
    for t, v in losses.items():
      sums[t] += float(v)

  for batch in batches:
    batch = _on(batch, mesh)
    if hosted:  # The attack's programs, then the clean evaluation's program on its images.
      attacked = {**batch, "image": attack_images(predict, state, batch, eps, bounds, baselines,
                                                  index, tasks=tasks, spec=spec, loop=loop)}
      out = _compiled(state, attacked, eps, None, None, None, predict=predict, tasks=tasks,
                      spec=None, loop=None)
    else:
      out = _compiled(state, batch, eps, bounds, baselines, index, predict=predict, tasks=tasks,
                      spec=spec, loop=None if spec is None else loop)
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
