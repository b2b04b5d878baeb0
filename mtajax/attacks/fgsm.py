"""FGSM (reference-spec §5.1): one signed step of size ε."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from mtajax import directions as directions_lib
from mtajax.attacks import common


@functools.partial(jax.jit, static_argnames=("loss_fn", "direction"))
def _fgsm(loss_fn, x, labels, eps, bounds, direction):
  d, losses = direction(loss_fn, x, labels)
  x_adv = common.clip(common.project(x + eps * common.safe_sign(d), x, eps), bounds)
  stacked = {t: v[None] for t, v in losses.items()}
  return common.AttackResult(x_adv, common.objective_trace(direction, stacked, None), stacked)


def fgsm(loss_fn: directions_lib.LossFn, x: jax.Array, labels: Any, *,
         direction: directions_lib.Direction, eps: Any, bounds: common.Bounds
         ) -> common.AttackResult:
  """``x_adv = clip(x + ε·sign(D(x)))``.

  Args:
    loss_fn: ``loss_fn(x, labels) -> {task: (B,) losses}``.
    x: clean batch (B, ..., C), inside ``bounds``.
    labels: anything ``loss_fn`` needs (a traced pytree).
    direction: a :mod:`mtajax.directions` direction.
    eps: L∞ radius in input units (traced: sweeping ε does not recompile).
    bounds: per-channel ``(low, high)`` of the valid input box.

  Returns:
    :class:`~mtajax.attacks.common.AttackResult` with diagnostics at the clean input.
  """
  common.check_inputs(x, eps, bounds)
  return _fgsm(loss_fn, x, labels, jnp.asarray(eps, x.dtype), bounds, direction)
