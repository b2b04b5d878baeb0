"""Attack losses: an open registry of per-pixel losses that attacks ascend instead of the task loss.

An entry is ``fn(task, pred, batch, context) -> (num, den)``: per-pixel loss numerator and
denominator weight (B, h, w), zero on invalid pixels, exactly like ``Task.pixel_loss(pred, batch)``;
``context`` is the attack's :class:`mtajax.attacks.Context` (iteration index, number of iterations,
clean predictions at x0) or None outside an attack. ``'default'`` is the task's own loss (training
losses never change). :func:`mtajax.tasks.make_loss_fn` reduces ``(num, den)`` per image like
``Task.loss``.
"""

from __future__ import annotations

from typing import Any, Callable

import jax

from mtajax.tasks import base

AttackLoss = Callable[[base.Task, jax.Array, base.Batch, Any], tuple[jax.Array, jax.Array]]
DEFAULT = "default"
_REGISTRY: dict[str, AttackLoss] = {}


def register(name: str, fn: AttackLoss) -> None:
  """Makes ``make_loss_fn(..., attack_loss=name)`` use ``fn`` (re-registering replaces it)."""
  if not callable(fn):
    raise ValueError(f"attack loss {name!r} must be callable; got {fn!r}.")
  _REGISTRY[name] = fn


def get(name: str) -> AttackLoss:
  """The attack loss called ``name``."""
  if name not in _REGISTRY:
    raise ValueError(f"unknown attack loss {name!r}; use one of {', '.join(_REGISTRY)} or "
                     "mtajax.tasks.attack_losses.register() your own.")
  return _REGISTRY[name]


def names() -> tuple[str, ...]:
  """The registered attack losses."""
  return tuple(_REGISTRY)


def _default(task: base.Task, pred: jax.Array, batch: base.Batch, context: Any):
  del context
  return task.pixel_loss(pred, batch)


register(DEFAULT, _default)
