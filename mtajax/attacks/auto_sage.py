"""Auto-SAGE as the reference implements it (``SelfAttentionGradientAttackProto``, spec §5.4).

Per step: per-task gradients g_t at x (one forward, T backward), S = Σ_t A_t·g_t, a look-ahead
point x1 = clip(proj(x + s·sign(S))), the gradient of the look-ahead objective at x1, an update of
the per-task, per-element weights A_t, and the signed step with S2 = Σ_t A_t·g_t.

* ``direction=total()`` is the reference ``AS_Ori`` (raw gradients of the batch-pooled losses);
  ``direction=gbmta()`` is ``AS_MTL`` (per-image gradients divided by the current per-image loss).
* Reference bug Q1 — its look-ahead uses only the LAST task's gradient, T times — is fixed by
  default (the look-ahead uses Σ_t g_t(x1), one backward pass); ``lookahead='last_task'`` restores it.
* sech² is evaluated stably as 4e^{−2|u|}/(1+e^{−2|u|})² (the reference overflows to NaN for
  |u| ≳ 44, Q2).
* As in the reference: no self-attention map φ, no EOT, momentum ``decay`` 0, α per task per
  input element, the last iterate returned (Q3).
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp

from mtajax import directions as directions_lib
from mtajax.attacks import common
from mtajax.attacks import threat as threat_lib


def sech2(u: jax.Array) -> jax.Array:
  """sech²(u) without overflow."""
  e = jnp.exp(-2.0 * jnp.abs(u))
  return 4.0 * e / (1.0 + e) ** 2


def _auto_sage(loss_fn, direction, *, x0, labels, eps, step_size, lr, kappa, decay, bounds,
               num_steps, lookahead, unroll):
  clean = common.clean_context(loss_fn, x0, labels)
  names = directions_lib.task_names(common.bind(loss_fn, 0, num_steps, clean), x0, labels)
  last = names[-1]

  def lookahead_grad(loss, x1):
    if lookahead == "all":
      return direction(loss, x1, labels)[0]
    only_last = lambda x, l: {last: loss(x, l)[last]}  # pylint: disable=unnecessary-lambda-assignment
    return len(names) * direction(only_last, x1, labels)[0]

  def body(carry, k):
    x, a, g = carry
    loss = common.bind(loss_fn, k, num_steps, clean)
    dm, losses = direction.task_grads(loss, x, labels)
    s = jnp.sum(a * dm, axis=0)
    x1 = common.step(x, x0, s, step_size, eps, bounds)
    dfdx = -lookahead_grad(loss, x1)
    a = a - lr * dfdx[None] * (kappa * step * dm * sech2(kappa * s)[None])
    g = decay * g + jnp.sum(a * dm, axis=0)
    return (common.step(x, x0, g, step_size, eps, bounds), a, g), losses

  step = threat_lib.per_sample(step_size, x0)  # A (B,) step against the (T, B, ...) weights.
  init = (x0, jnp.ones((len(names),) + x0.shape, x0.dtype), jnp.zeros_like(x0))
  (x, _, _), losses = jax.lax.scan(body, init, jnp.arange(num_steps),
                                   unroll=common.resolve_unroll(unroll))
  state = direction.init(loss_fn, x0, labels, {t: v[0] for t, v in losses.items()})
  batch = x0.shape[:1]
  return common.AttackResult(x, direction.objective(losses, state), losses,
                             jnp.full(batch, num_steps, jnp.int32),
                             jnp.broadcast_to(step_size, (num_steps,) + batch))


def auto_sage(loss_fn: directions_lib.LossFn, x: jax.Array, labels: Any, *,
              direction: directions_lib.Direction, eps: Any, bounds: common.Bounds,
              num_steps: int = 10, step_size: Any = None, lr: float = 10.0, kappa: float = 50.0,
              decay: float = 0.0, lookahead: Literal["all", "last_task"] = "all",
              unroll: bool | int | None = None) -> common.AttackResult:
  """Auto-SAGE (see the module docstring).

  Args:
    loss_fn: ``loss_fn(x, labels) -> {task: (B,) losses}``.
    x: clean batch (B, ..., C) inside ``bounds``.
    labels: anything ``loss_fn`` needs (a traced pytree).
    direction: ``total()`` (reference baseline ``AS_Ori``) or ``gbmta()`` (``AS_MTL``).
    eps: L∞ radius in input units, scalar or (B,) (traced).
    bounds: per-channel ``(low, high)`` of the valid input box.
    num_steps: N (static).
    step_size: s (traced); default ε/N.
    lr: learning rate of the weights α (reference 10).
    kappa: sech² fitting factor κ (reference 50).
    decay: momentum of the accumulated direction (reference 0).
    lookahead: ``'all'`` (fixed) or ``'last_task'`` (reference bug Q1).
    unroll: ``lax.scan`` unroll; None = measured platform default.

  Returns:
    :class:`~mtajax.attacks.common.AttackResult` (last iterate; diagnostics at iterates 0..N−1).
  """
  if not getattr(direction, "sums_task_grads", False):
    raise ValueError(f"Auto-SAGE supports directions whose D is the sum of their task_grads "
                     f"(sums_task_grads=True: total, gbmta), not {direction.name!r} (the reference "
                     "runs no Single-x or SignTotal Auto-SAGE).")
  if lookahead not in ("all", "last_task"):
    raise ValueError(f"unknown lookahead {lookahead!r}; use 'all' or 'last_task'.")
  common.check_inputs(x, eps, bounds, step_size=step_size)
  eps = jnp.asarray(eps, x.dtype)
  step_size = eps / num_steps if step_size is None else jnp.asarray(step_size, x.dtype)
  common.check_steps(num_steps)
  dt = x.dtype
  args = dict(x0=x, labels=labels, eps=eps, step_size=step_size, lr=jnp.asarray(lr, dt),
              kappa=jnp.asarray(kappa, dt), decay=jnp.asarray(decay, dt), bounds=bounds)
  return common.run(_auto_sage, loss_fn, direction, args, num_steps=num_steps,
                    lookahead=lookahead, unroll=unroll)
