"""PGD — the reference's I-FGSM (reference-spec §5.2) with optional random start and best iterate.

Step rule: ``x ← clip(proj(x + a·unit(D(x))))`` (unit = sign for L∞, D/‖D‖₂ for L2).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from mtajax import directions as directions_lib
from mtajax.attacks import common
from mtajax.attacks import threat as threat_lib


def _pgd(loss_fn, direction, *, x0, labels, eps, step_size, bounds, key, baselines, targets,
         x_init, num_steps, start, return_best, keep_untargeted, norm, unroll):
  threat = threat_lib.by_name(norm)
  loss_at = common.losses_per_step(loss_fn, x0, labels, num_steps, targets, direction,
                                   keep_untargeted)

  x = common.start(start, key, x0, eps, bounds, threat, x_init)
  state = baselines
  if return_best and state is None:
    losses0 = common.losses(direction, loss_at(0), x0, labels, unroll)
    state = direction.init(loss_at(0), x0, labels, common.detached(losses0))

  def body(carry, k):
    x, x_best, f_best, k_best = carry
    d, losses = common.ascent(direction, loss_at(k), x, labels, unroll)
    if return_best:
      better, f_best = common.improve(direction.objective(losses, state), f_best)
      x_best = jnp.where(common.per_sample(better, x), x, x_best)
      k_best = jnp.where(better, k, k_best)
    return (common.step(x, x0, d, step_size, eps, bounds, threat), x_best, f_best, k_best), losses

  batch = x0.shape[:1]
  init = (x, x, jnp.full(batch, -jnp.inf, x0.dtype), jnp.zeros(batch, jnp.int32))
  (x, x_best, f_best, k_best), losses = jax.lax.scan(
      body, init, jnp.arange(num_steps), unroll=common.resolve_unroll(unroll))
  if return_best:  # The last iterate has not been evaluated yet.
    last = common.losses(direction, loss_at(num_steps - 1), x, labels, unroll)
    better, _ = common.improve(direction.objective(last, state), f_best)
    x = jnp.where(common.per_sample(better, x), x, x_best)
    k_best = jnp.where(better, num_steps, k_best)
    losses = {t: jnp.concatenate([v, last[t][None]]) for t, v in losses.items()}
  else:
    k_best = jnp.full(batch, num_steps, jnp.int32)
  if state is None:
    state = direction.init(loss_fn, x0, labels, {t: v[0] for t, v in losses.items()})
  return common.AttackResult(
      x, direction.objective(losses, state), common.reported(losses, targets, direction), k_best,
      jnp.broadcast_to(step_size * jnp.ones(batch, x0.dtype), (num_steps,) + batch))


def pgd(loss_fn: directions_lib.LossFn, x: jax.Array, labels: Any, *,
        direction: directions_lib.Direction, eps: Any, bounds: common.Bounds,
        num_steps: int = 10, step_size: Any = None, random_start: bool = False,
        return_best: bool = False, key: jax.Array | None = None,
        baselines: dict[str, Any] | None = None, unroll: bool | int | None = None,
        norm: str = "linf", targets: Mapping[str, Any] | None = None,
        keep_untargeted: bool = False, x_init: jax.Array | None = None
        ) -> common.AttackResult:
  """Iterated steps ``x ← clip(proj(x + a·unit(D(x))))``; the reference I-FGSM by default.

  Args:
    loss_fn: ``loss_fn(x, labels) -> {task: (B,) losses}``.
    x: clean batch (B, ..., C) inside ``bounds``.
    labels: anything ``loss_fn`` needs (a traced pytree).
    direction: a :mod:`mtajax.directions` direction.
    eps: radius in input units, a scalar or one per image (B,) (traced).
    bounds: per-channel ``(low, high)`` of the valid input box.
    num_steps: N iterations (static; the reference default is 10).
    step_size: step a (traced); default ε/N as the reference (the ε-ball then never binds).
    random_start: start uniformly in the ε-ball (the paper's PGD; the reference has none).
    return_best: return each sample's iterate with the highest objective instead of the last one
      (costs one extra forward pass).
    key: PRNG key, needed with ``random_start``.
    baselines: the direction's start-of-attack state (GB-MTA: per-task c_t, used by the
      diagnostics and the best-iterate choice); default ``direction.init`` at the clean input
      (without ``return_best``: at the first iterate).
    unroll: ``lax.scan`` unroll; None = measured platform default.
    norm: threat model, ``'linf'`` (sign steps) or ``'l2'`` (steps along D/‖D‖₂ per image).
    targets: ``{task: target map}`` (shaped like ``labels[task]``): descend each task's loss
      against its target instead of ascending it (``labels`` must be a dict).
    keep_untargeted: with ``targets``, keep attacking the other tasks untargeted (default: drop).
    x_init: start from this point (projected into the ball and box) instead.

  Returns:
    :class:`~mtajax.attacks.common.AttackResult`; diagnostics cover iterates 0..N−1 (and N with
    ``return_best``).
  """
  threat = common.check_inputs(x, eps, bounds, step_size=step_size, random_start_=random_start,
                               key=key, norm=norm, labels=labels, targets=targets,
                               x_init=x_init)
  common.check_steps(num_steps)
  eps = jnp.asarray(eps, x.dtype)
  step_size = eps / num_steps if step_size is None else jnp.asarray(step_size, x.dtype)
  args = dict(x0=x, labels=labels, eps=eps, step_size=step_size, bounds=bounds, key=key,
              baselines=baselines, targets=targets, x_init=x_init)
  return common.run(_pgd, loss_fn, direction, args, num_steps=num_steps,
                    start=common.start_kind(random_start, x_init), return_best=return_best,
                    keep_untargeted=keep_untargeted, norm=threat.name, unroll=unroll)
