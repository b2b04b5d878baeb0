"""Per-task loss functions of a model: the attack interface ``loss_fn(x, batch) -> {task: (B,)}``."""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from mtajax.tasks import base

Predict = Callable[[jax.Array], Mapping[str, jax.Array]]
LossFn = Callable[[jax.Array, base.Batch], dict[str, jax.Array]]


def make_loss_fn(predict: Predict, tasks: Sequence[base.Task],
                 reduction: base.Reduction) -> LossFn:
  """Builds ``loss_fn(x, batch) -> {task.name: (B,) per-sample loss}`` from ``predict(x)``.

  Args:
    predict: pure function mapping the model input to ``{task name: (B, h, w, C)}``.
    tasks: the tasks to score, in order.
    reduction: ``'image'`` (reference ``'none'``: GB-MTA, SignTotal) or ``'pooled'`` (batch mean ==
      reference ``'mean'``: Single-x, Total, training).
  """
  base.check_choice("reduction", reduction, base.REDUCTIONS)
  tasks = tuple(tasks)
  if not tasks:
    raise ValueError("make_loss_fn needs at least one task.")

  def loss_fn(x: jax.Array, batch: base.Batch) -> dict[str, jax.Array]:
    preds = predict(x)
    missing = [t.name for t in tasks if t.name not in preds]
    if missing:
      raise ValueError(f"predict() returned no output for tasks {missing}; it returned "
                       f"{sorted(preds)}.")
    return {t.name: t.loss(preds[t.name], batch, reduction) for t in tasks}

  return loss_fn


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
