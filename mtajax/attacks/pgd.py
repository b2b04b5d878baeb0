"""PGD — the reference's I-FGSM (reference-spec §5.2) with optional random start and best iterate."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from mtajax import directions as directions_lib
from mtajax.attacks import common


@functools.partial(jax.jit, static_argnames=("loss_fn", "direction", "num_steps", "random_start",
                                             "return_best", "unroll"))
def _pgd(loss_fn, x0, labels, eps, step_size, bounds, key, baselines, direction, num_steps,
         random_start, return_best, unroll):
  x = common.random_start(key, x0, eps, bounds) if random_start else x0
  if return_best and baselines is None and isinstance(direction, directions_lib.GBMTA):
    baselines = common.detached(loss_fn(x0, labels))

  def objective(losses):
    return direction.objective(losses, baselines)

  def body(carry, _):
    x, x_best, f_best = carry
    d, losses = direction(loss_fn, x, labels)
    if return_best:
      f = objective(losses)
      better = f > f_best
      x_best = jnp.where(common.per_sample(better, x), x, x_best)
      f_best = jnp.maximum(f, f_best)
    return (common.step(x, x0, d, step_size, eps, bounds), x_best, f_best), losses

  f_init = jnp.full(x0.shape[:1], -jnp.inf, x0.dtype)
  (x, x_best, f_best), losses = jax.lax.scan(
      body, (x, x, f_init), None, length=num_steps, unroll=common.resolve_unroll(unroll))
  if return_best:  # The last iterate has not been evaluated yet.
    last = loss_fn(x, labels)
    x = jnp.where(common.per_sample(objective(last) > f_best, x), x, x_best)
    losses = {t: jnp.concatenate([v, last[t][None]]) for t, v in losses.items()}
  return common.AttackResult(x, common.objective_trace(direction, losses, baselines), losses)


def pgd(loss_fn: directions_lib.LossFn, x: jax.Array, labels: Any, *,
        direction: directions_lib.Direction, eps: Any, bounds: common.Bounds,
        num_steps: int = 10, step_size: Any = None, random_start: bool = False,
        return_best: bool = False, key: jax.Array | None = None,
        baselines: dict[str, Any] | None = None, unroll: bool | int | None = None
        ) -> common.AttackResult:
  """Iterated signed steps ``x ← clip(proj(x + a·sign(D(x))))``; reference I-FGSM by default.

  Args:
    loss_fn: ``loss_fn(x, labels) -> {task: (B,) losses}``.
    x: clean batch (B, ..., C) inside ``bounds``.
    labels: anything ``loss_fn`` needs (a traced pytree).
    direction: a :mod:`mtajax.directions` direction.
    eps: L∞ radius in input units (traced).
    bounds: per-channel ``(low, high)`` of the valid input box.
    num_steps: N iterations (static; the reference default is 10).
    step_size: step a (traced); default ε/N as the reference (the ε-ball then never binds).
    random_start: start uniformly in the ε-ball (the paper's PGD; the reference has none).
    return_best: return each sample's iterate with the highest objective instead of the last one
      (costs one extra forward pass).
    key: PRNG key, needed with ``random_start``.
    baselines: per-task c_t of the GB-MTA objective (diagnostics and best-iterate choice);
      default: the clean losses at ``x`` (the first iterate's losses for the diagnostics).
    unroll: ``lax.scan`` unroll; None = measured platform default.

  Returns:
    :class:`~mtajax.attacks.common.AttackResult`; diagnostics cover iterates 0..N−1 (and N with
    ``return_best``).
  """
  common.check_inputs(x, eps, bounds, step_size=step_size, random_start_=random_start, key=key)
  eps = jnp.asarray(eps, x.dtype)
  step_size = eps / num_steps if step_size is None else jnp.asarray(step_size, x.dtype)
  return _pgd(loss_fn, x, labels, eps, step_size, bounds, key, baselines, direction, num_steps,
              random_start, return_best, unroll)
