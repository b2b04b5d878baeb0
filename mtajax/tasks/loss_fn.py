"""Per-task loss functions of a model: the attack interface ``loss_fn(x, batch) -> {task: (B,)}``."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from mtajax.tasks import attack_losses
from mtajax.tasks import base

Predict = Callable[[jax.Array], Mapping[str, jax.Array]]
LossFunction = Callable[[jax.Array, base.Batch], dict[str, jax.Array]]


@functools.partial(jax.tree_util.register_dataclass, data_fields=["predict"],
                   meta_fields=["tasks", "reduction", "attack_loss"])
@dataclasses.dataclass(frozen=True)
class LossFn:
  """``loss_fn(x, batch) -> {task.name: (B,) per-sample loss}`` of ``predict(x)``.

  A pytree whose leaves are the arrays inside ``predict`` (when it is a ``functools.partial``,
  e.g. ``partial(predict, state)``): the attacks trace them, so a loss function rebuilt per batch
  around unchanged weights reuses the compiled attack, and the weights are never baked into it.

  Attributes:
    predict: maps the model input to ``{task name: (B, h, w, C)}``.
    tasks: the tasks to score, in order.
    reduction: ``'image'`` or ``'pooled'`` (see :func:`make_loss_fn`).
    attack_loss: a name from :mod:`mtajax.tasks.attack_losses` (``'default'``: the task losses),
      or per-task names as :func:`~mtajax.tasks.attack_losses.canonical` pairs.
  """
  predict: Predict
  tasks: tuple[base.Task, ...]
  reduction: base.Reduction
  attack_loss: str | attack_losses.PerTask = attack_losses.DEFAULT

  @property
  def takes_context(self) -> bool:
    """Attack losses other than the default see the attack's context (step, clean prediction)."""
    return self.attack_loss != attack_losses.DEFAULT

  @property
  def reads_steps(self) -> bool:
    """Whether its attack losses read the attack's step count (:func:`attack_losses.reads_steps`):
    if not, attacks that differ only in step count share their compiled programs."""
    return self.takes_context and attack_losses.reads_steps(self.attack_loss)

  def init_context(self, x0: jax.Array, batch: base.Batch) -> Mapping[str, jax.Array]:
    """The clean predictions at ``x0`` (an attack's :attr:`Context.clean`)."""
    del batch
    return self.predict(x0)

  def check_labels(self, batch: base.Batch) -> None:
    """Each task's :meth:`~mtajax.tasks.base.Task.check_labels` (the attacks call it on concrete
    labels before tracing them)."""
    for t in self.tasks:
      t.check_labels(batch)

  def __call__(self, x: jax.Array, batch: base.Batch, context: Any = None
               ) -> dict[str, jax.Array]:
    preds = self.predict(x)
    missing = [t.name for t in self.tasks if t.name not in preds]
    if missing:
      raise ValueError(f"predict() returned no output for tasks {missing}; it returned "
                       f"{sorted(preds)}.")
    if not self.takes_context:
      return {t.name: t.loss(preds[t.name], batch, self.reduction) for t in self.tasks}
    out = {}
    for t in self.tasks:
      t.check_pred(preds[t.name])
      fn = attack_losses.get(attack_losses.for_task(self.attack_loss, t.name))
      num, den = fn(t, preds[t.name], batch, context)
      out[t.name] = base.reduce_loss(num, den, self.reduction, batch)
    return out


def make_loss_fn(predict: Predict, tasks: Sequence[base.Task], reduction: base.Reduction,
                 attack_loss: str | Mapping[str, str] = attack_losses.DEFAULT) -> LossFn:
  """Builds ``loss_fn(x, batch) -> {task.name: (B,) per-sample loss}`` from ``predict(x)``.

  Args:
    predict: pure function mapping the model input to ``{task name: (B, h, w, C)}``; pass
      ``functools.partial(predict, state)`` to keep the weights traced.
    tasks: the tasks to score, in order.
    reduction: ``'image'`` (reference ``'none'``: GB-MTA, SignTotal) or ``'pooled'`` (batch mean ==
      reference ``'mean'``: Single-x, Total, training).
    attack_loss: the per-pixel loss attacks ascend (:mod:`mtajax.tasks.attack_losses`): a name
      for every task, or ``{task name: loss name}`` (tasks not named use ``'default'``).
  """
  base.check_choice("reduction", reduction, base.REDUCTIONS)
  tasks = tuple(tasks)
  if not tasks:
    raise ValueError("make_loss_fn needs at least one task.")
  attack_loss = attack_losses.canonical(attack_loss, [t.name for t in tasks])
  if isinstance(predict, functools.partial) and not isinstance(predict, jax.tree_util.Partial):
    predict = jax.tree_util.Partial(predict.func, *predict.args, **predict.keywords)
  return LossFn(predict, tasks, reduction, attack_loss)


def total_loss(losses: Mapping[str, jax.Array],
               weights: Mapping[str, float] | None = None) -> jax.Array:
  """``sum_t weights[t] * mean_b losses[t]`` (all weights 1 by default, as the reference trains).

  With ``'pooled'`` per-sample losses this is the reference's ``sum_t lambda_t * Lmean_t``.
  """
  weights = {} if weights is None else weights
  unknown = set(weights) - set(losses)
  if unknown:
    raise ValueError(f"Task weights for unknown tasks {sorted(unknown)}; losses has {sorted(losses)}.")
  return sum(weights.get(name, 1.0) * jnp.mean(value) for name, value in losses.items())
