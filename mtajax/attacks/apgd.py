"""APGD as the reference implements it ("AutoAttackMatGPU*", reference-spec §5.3).

Default behaviour reproduces the reference exactly: initial step ε/N, no random start, momentum 0.75,
the float64 checkpoint list W (``checkpoints``), condition 1 (< 0.75 of the window improved) and the
reference's condition 2 (η and the *raw* objective equal at both ends of the window, Q4), the
one-step-lagged window (Q11), a batch-level objective broadcast to every sample (Q7), ``≥`` for the
best-point update (Q8), no restart from the best point on halving (Q5) and the best iterate returned.
Options give per-sample bookkeeping and the original AutoAttack behaviour (2ε start step, random
start, restart from the best point on halving).

The objective of each direction comes from :meth:`mtajax.directions.Direction.objective`; for GB-MTA
it is Σ_t (L_t − c_t)/c_t with caller-given baselines c_t (the reference passes the dataset-mean
clean loss of each task, Q10; the default here is the clean loss of the current input, as in paper
Algorithm 3).

Cost: N direction evaluations and one extra forward pass (the reference spends N+1 forwards on the
objective; here the objective at an iterate reuses the forward of the direction computed there).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mtajax import directions as directions_lib
from mtajax.attacks import common


def checkpoints(num_steps: int) -> list[int]:
  """The reference checkpoint list W: ceil(p_j·N) with p from its float64 recurrence, deduplicated.

  >>> checkpoints(10)
  [0, 3, 5, 6, 8, 9, 10]
  """
  p = [0.0, 0.22]
  while (nxt := p[-1] + max(p[-1] - p[-2] - 0.03, 0.06)) < 1:
    p.append(nxt)
  w = []
  for pj in p:
    c = math.ceil(pj * num_steps)
    if c not in w:
      w.append(c)
  return w


def _schedule(num_steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """For k = 1..N−1: k, whether k is a checkpoint, and the previous checkpoint."""
  w = checkpoints(num_steps)
  ks = np.arange(1, num_steps, dtype=np.int32)
  is_check = np.array([k in w for k in ks], dtype=bool)
  prev = np.array([w[w.index(k) - 1] if k in w else 0 for k in ks], dtype=np.int32)
  return ks, is_check, prev


@functools.partial(jax.jit, static_argnames=(
    "loss_fn", "direction", "num_steps", "random_start", "restart_from_best", "per_sample",
    "unroll"))
def _apgd(loss_fn, x0, labels, eps, step_size, momentum, bounds, key, baselines, direction,
          num_steps, random_start, restart_from_best, per_sample, unroll):
  n = num_steps
  x_start = common.random_start(key, x0, eps, bounds) if random_start else x0
  d0, losses0 = direction(loss_fn, x_start, labels)
  if baselines is None and isinstance(direction, directions_lib.GBMTA):
    baselines = common.detached(losses0)

  def objective(losses):
    f = direction.objective(losses, baselines)
    return f if per_sample else jnp.broadcast_to(jnp.mean(f), f.shape)

  def ps(v):
    return common.per_sample(v, x0)

  f0 = objective(losses0)
  eta0 = jnp.broadcast_to(step_size, f0.shape).astype(f0.dtype)
  f_hist = jnp.zeros((n + 1,) + f0.shape, f0.dtype).at[0].set(f0)
  eta_hist = jnp.zeros_like(f_hist).at[0].set(eta0).at[1].set(eta0)
  x1 = common.step(x_start, x0, d0, ps(eta0), eps, bounds)
  no = jnp.zeros(f0.shape, bool)

  def update_best(k, x, d, f, x_best, d_best, f_best):
    better = jnp.where(k == 1, f > f_best, f >= f_best)  # First comparison strict (Q8).
    return (jnp.where(ps(better), x, x_best), jnp.where(ps(better), d, d_best),
            jnp.maximum(f, f_best))

  def body(carry, xs):
    x_prev, x_cur, x_best, d_best, f_best, f_hist, eta_hist, pending = carry
    k, is_check, prev = xs
    d, losses = direction(loss_fn, x_cur, labels)
    f = objective(losses)
    f_hist = f_hist.at[k].set(f)
    x_best, d_best, f_best = update_best(k, x_cur, d, f, x_best, d_best, f_best)
    if restart_from_best:  # Halving decided at the previous checkpoint: continue from the best.
      x_cur = jnp.where(ps(pending), x_best, x_cur)
      d = jnp.where(ps(pending), d_best, d)
    i = jnp.arange(n)
    window = ((i >= prev) & (i < k))[:, None]
    improved = jnp.sum(window & (f_hist[1:] > f_hist[:-1]), axis=0)
    cond1 = improved < 0.75 * (k - prev)
    cond2 = (eta_hist[prev] == eta_hist[k]) & (f_hist[prev] == f_hist[k])
    halve = is_check & (cond1 | cond2)
    eta = eta_hist[k]
    eta_hist = eta_hist.at[k + 1].set(jnp.where(halve, eta / 2, eta))
    z = common.project(x_cur + ps(eta) * common.safe_sign(d), x0, eps)
    x_new = x_cur + momentum * (z - x_cur) + (1 - momentum) * (x_cur - x_prev)
    x_new = common.clip(common.project(x_new, x0, eps), bounds)
    carry = (x_cur, x_new, x_best, d_best, f_best, f_hist, eta_hist, halve & restart_from_best)
    return carry, losses

  carry = (x_start, x1, x_start, d0, f0, f_hist, eta_hist, no)
  carry, losses = jax.lax.scan(body, carry, tuple(map(jnp.asarray, _schedule(n))),
                               unroll=common.resolve_unroll(unroll))
  _, x_last, x_best, d_best, f_best, f_hist, _, _ = carry
  last = loss_fn(x_last, labels)
  f = objective(last)
  f_hist = f_hist.at[n].set(f)
  x_best, _, _ = update_best(n, x_last, d_best, f, x_best, d_best, f_best)
  losses = {t: jnp.concatenate([losses0[t][None], losses[t], last[t][None]]) for t in last}
  return common.AttackResult(x_best, f_hist, losses)


def apgd(loss_fn: directions_lib.LossFn, x: jax.Array, labels: Any, *,
         direction: directions_lib.Direction, eps: Any, bounds: common.Bounds,
         num_steps: int = 10, step_size: Any = None, momentum: float = 0.75,
         baselines: dict[str, Any] | None = None, per_sample: bool = False,
         random_start: bool = False, restart_from_best: bool = False,
         key: jax.Array | None = None, unroll: bool | int | None = None) -> common.AttackResult:
  """APGD with the reference's bookkeeping by default (see the module docstring).

  Args:
    loss_fn: ``loss_fn(x, labels) -> {task: (B,) losses}``.
    x: clean batch (B, ..., C) inside ``bounds``.
    labels: anything ``loss_fn`` needs (a traced pytree).
    direction: a :mod:`mtajax.directions` direction (its objective is ascended).
    eps: L∞ radius in input units (traced).
    bounds: per-channel ``(low, high)`` of the valid input box.
    num_steps: N (static); the checkpoint list W depends on it.
    step_size: initial step η0 (traced); default ε/N as the reference (original APGD: 2ε).
    momentum: α (reference 0.75).
    baselines: GB-MTA objective baselines c_t (scalar or (B,) per task); the reference passes the
      dataset-mean clean loss per task; default the losses at the start point (paper Algorithm 3).
    per_sample: per-sample objective, step sizes and best points (original APGD) instead of the
      reference's batch-level decisions (Q7).
    random_start: uniform start in the ε-ball (original APGD).
    restart_from_best: continue from the best point after a halving (original APGD and the
      reference's ``revised=True`` ``AAR`` attacks, Q5/Q6).
    key: PRNG key, needed with ``random_start``.
    unroll: ``lax.scan`` unroll; None = measured platform default.

  Returns:
    :class:`~mtajax.attacks.common.AttackResult` with the best point and (N+1, B) diagnostics.
  """
  common.check_inputs(x, eps, bounds, step_size=step_size, random_start_=random_start, key=key)
  eps = jnp.asarray(eps, x.dtype)
  step_size = eps / num_steps if step_size is None else jnp.asarray(step_size, x.dtype)
  return _apgd(loss_fn, x, labels, eps, step_size, jnp.asarray(momentum, x.dtype), bounds, key,
               baselines, direction, num_steps, random_start, restart_from_best, per_sample,
               unroll)
