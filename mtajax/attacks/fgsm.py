"""FGSM (reference-spec §5.1): one step of size ε (FGM along D/‖D‖₂ with ``norm='l2'``)."""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from mtajax import directions as directions_lib
from mtajax.attacks import common
from mtajax.attacks import threat as threat_lib


def _fgsm(loss_fn, direction, *, x, labels, eps, bounds, targets, keep_untargeted, norm):
  threat = threat_lib.by_name(norm)
  loss = common.targeted(common.bind(loss_fn, 0, 1, common.clean_context(loss_fn, x, labels)),
                         targets, direction, keep_untargeted)
  d, losses = direction(loss, x, labels)
  x_adv = common.step(x, x, d, eps, eps, bounds, threat)
  stacked = {t: v[None] for t, v in losses.items()}
  state = direction.init(loss, x, labels, losses)
  batch = x.shape[:1]
  return common.AttackResult(x_adv, direction.objective(stacked, state),
                             common.reported(stacked, targets, direction),
                             jnp.ones(batch, jnp.int32),
                             jnp.broadcast_to(eps * jnp.ones(batch, x.dtype), (1,) + batch))


def fgsm(loss_fn: directions_lib.LossFn, x: jax.Array, labels: Any, *,
         direction: directions_lib.Direction, eps: Any, bounds: common.Bounds,
         norm: str = "linf", targets: Mapping[str, Any] | None = None,
         keep_untargeted: bool = False) -> common.AttackResult:
  """``x_adv = clip(proj(x + ε·unit(D(x))))``.

  Args:
    loss_fn: ``loss_fn(x, labels) -> {task: (B,) losses}``.
    x: clean batch (B, ..., C), inside ``bounds``.
    labels: anything ``loss_fn`` needs (a traced pytree).
    direction: a :mod:`mtajax.directions` direction.
    eps: radius in input units, scalar or (B,) (traced: sweeping ε does not recompile).
    bounds: per-channel ``(low, high)`` of the valid input box.
    norm: ``'linf'`` (sign step, the reference) or ``'l2'`` (FGM: ε·D/‖D‖₂ per image).
    targets: ``{task: target map}``: descend those tasks' losses against their targets.
    keep_untargeted: with ``targets``, keep attacking the other tasks untargeted.

  Returns:
    :class:`~mtajax.attacks.common.AttackResult` with diagnostics at the clean input.
  """
  threat = common.check_inputs(x, eps, bounds, norm=norm, labels=labels, targets=targets)
  args = dict(x=x, labels=labels, eps=jnp.asarray(eps, x.dtype), bounds=bounds, targets=targets)
  return common.run(_fgsm, loss_fn, direction, args, keep_untargeted=keep_untargeted,
                    norm=threat.name)
