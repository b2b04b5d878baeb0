"""APGD: the reference's variant ("AutoAttackMatGPU*", reference-spec §5.3) and fra31/auto-attack's.

``variant='reference'`` (default) reproduces the reference exactly: initial step ε/N, no random
start, momentum 0.75, the float64 checkpoint list W (``checkpoints``), condition 1 (< 0.75 of the
window improved) and the reference's condition 2 (η and the *raw* objective equal at both ends of the
window, Q4), the one-step-lagged window (Q11), a batch-level objective broadcast to every sample
(Q7), ``≥`` for the best-point update (Q8), no restart from the best point on halving (Q5) and the
best iterate returned. Options give per-sample bookkeeping, random start and restart from the best
point (the reference's ``revised=True``).

``variant='autoattack'`` is the algorithm of fra31/auto-attack's ``APGDAttack.attack_single_run``
(L∞ and L2): initial step 2ε, per-sample everything, AutoAttack's start (with ``random_start``),
no momentum on the first step, checkpoints every k iterations with k = ⌊0.22N⌋ shrinking by
⌊0.03N⌋ down to ⌊0.06N⌋ (each at least 1), condition 1 (≤ 0.75·k of the window's steps increased
the objective; the first window compares with the not-yet-written last entry, as AutoAttack does),
condition 2 (the step was not halved at the previous checkpoint and the BEST objective did not rise
since), and on halving a restart from the best point at the checkpoint itself; strict ``>`` for the
best point. Restarts are the caller's loop (one call per key).

The objective of each direction comes from :meth:`mtajax.directions.Direction.objective`; for GB-MTA
it is Σ_t (L_t − c_t)/c_t with baselines c_t (the reference passes the dataset-mean clean loss of
each task, Q10; the default here is the loss at the start point, as in paper Algorithm 3).

Cost: N direction evaluations and one extra forward pass (the reference spends N+1 forwards on the
objective; here the objective at an iterate reuses the forward of the direction computed there).
"""

from __future__ import annotations

import math
from typing import Any, Literal, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mtajax import directions as directions_lib
from mtajax.attacks import common
from mtajax.attacks import threat as threat_lib

VARIANTS = ("reference", "autoattack")


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
  """Reference: for k = 1..N−1, k, whether k is a checkpoint, and the previous checkpoint."""
  w = checkpoints(num_steps)
  ks = np.arange(1, num_steps, dtype=np.int32)
  is_check = np.array([k in w for k in ks], dtype=bool)
  prev = np.array([w[w.index(k) - 1] if k in w else 0 for k in ks], dtype=np.int32)
  return ks, is_check, prev


def autoattack_schedule(num_steps: int) -> tuple[np.ndarray, np.ndarray]:
  """AutoAttack: for iterations i = 0..N−1, whether a checkpoint follows i and its window k.

  >>> [int(i) for i in np.flatnonzero(autoattack_schedule(10)[0])]
  [1, 3, 5, 7, 9]
  """
  k = max(int(0.22 * num_steps), 1)
  size_decr, k_min = max(int(0.03 * num_steps), 1), max(int(0.06 * num_steps), 1)
  is_check, window, counter = np.zeros(num_steps, bool), np.zeros(num_steps, np.int32), 0
  for i in range(num_steps):
    counter += 1
    if counter == k:
      is_check[i], window[i] = True, k
      k, counter = max(k - size_decr, k_min), 0
  return is_check, window


def _objective_fn(direction, state, per_sample, example_weight):
  def objective(losses):
    f = direction.objective(losses, state)
    return f if per_sample else common.batch_objective(f, example_weight)
  return objective


def _reference_loop(loss_at, direction, threat, x0, x_start, labels, eps, step_size, momentum,
                    bounds, state, num_steps, restart_from_best, per_sample, example_weight,
                    unroll):
  n = num_steps
  d0, losses0 = common.ascent(direction, loss_at(0), x_start, labels, unroll)
  if state is None:
    state = direction.init(loss_at(0), x_start, labels, losses0)
  objective = _objective_fn(direction, state, per_sample, example_weight)

  def ps(v):
    return common.per_sample(v, x0)

  f0 = objective(losses0)
  eta0 = jnp.broadcast_to(step_size, f0.shape).astype(f0.dtype)
  f_hist = jnp.zeros((n + 1,) + f0.shape, f0.dtype).at[0].set(f0)
  eta_hist = jnp.zeros_like(f_hist).at[0].set(eta0).at[1].set(eta0)
  x1 = common.step(x_start, x0, d0, ps(eta0), eps, bounds, threat)
  no = jnp.zeros(f0.shape, bool)

  def update_best(k, x, d, f, x_best, d_best, f_best, k_best):
    better, f_best = common.improve(f, f_best, strict=k == 1)  # First comparison strict (Q8).
    return (jnp.where(ps(better), x, x_best), jnp.where(ps(better), d, d_best), f_best,
            jnp.where(better, k, k_best))

  def body(carry, xs):
    x_prev, x_cur, x_best, d_best, f_best, k_best, f_hist, eta_hist, pending = carry
    k, is_check, prev = xs
    d, losses = common.ascent(direction, loss_at(k), x_cur, labels, unroll)
    f = objective(losses)
    f_hist = f_hist.at[k].set(f)
    x_best, d_best, f_best, k_best = update_best(k, x_cur, d, f, x_best, d_best, f_best, k_best)
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
    z = threat.project(x_cur + ps(eta) * threat.unit(d), x0, eps)
    x_new = x_cur + momentum * (z - x_cur) + (1 - momentum) * (x_cur - x_prev)
    x_new = common.clip(threat.project(x_new, x0, eps), bounds)
    carry = (x_cur, x_new, x_best, d_best, f_best, k_best, f_hist, eta_hist,
             halve & restart_from_best)
    return carry, losses

  zero = jnp.zeros(f0.shape, jnp.int32)
  carry = (x_start, x1, x_start, d0, f0, zero, f_hist, eta_hist, no)
  carry, losses = jax.lax.scan(body, carry, tuple(map(jnp.asarray, _schedule(n))),
                               unroll=common.resolve_unroll(unroll))
  _, x_last, x_best, d_best, f_best, k_best, f_hist, eta_hist, _ = carry
  last = common.losses(direction, loss_at(n - 1), x_last, labels, unroll)
  f = objective(last)
  f_hist = f_hist.at[n].set(f)
  x_best, _, _, k_best = update_best(n, x_last, d_best, f, x_best, d_best, f_best, k_best)
  losses = {t: jnp.concatenate([losses0[t][None], losses[t], last[t][None]]) for t in last}
  return x_best, f_hist, losses, k_best, eta_hist[:n]


def _autoattack_loop(loss_at, direction, threat, x0, x_start, labels, eps, step_size, momentum,
                     bounds, state, num_steps, unroll):
  n = num_steps
  d0, losses0 = common.ascent(direction, loss_at(0), x_start, labels, unroll)
  if state is None:
    state = direction.init(loss_at(0), x_start, labels, losses0)

  def objective(losses):
    return direction.objective(losses, state)

  def ps(v):
    return common.per_sample(v, x0)

  def project(x):
    return common.clip(threat.project(x, x0, eps), bounds)

  def take_step(i, x, x_old, d, eta):
    a = jnp.where(i == 0, 1.0, momentum).astype(x0.dtype)
    z = project(x + ps(eta) * threat.unit(d))
    return project(x + (z - x) * a + (x - x_old) * (1 - a))

  f0 = objective(losses0)
  batch = f0.shape

  def body(carry, xs):
    x, x_old, d, eta, x_best, d_best, f_best, k_best, ls, reduced, best_last = carry
    i, is_check, window = xs
    x_new = take_step(i, x, x_old, d, eta)
    d_new, losses = common.ascent(direction, loss_at(i + 1), x_new, labels, unroll)
    f = objective(losses)
    ls = ls.at[i].set(f)
    better, f_best = common.improve(f, f_best)
    x_best = jnp.where(ps(better), x_new, x_best)
    d_best = jnp.where(ps(better), d_new, d_best)
    k_best = jnp.where(better, i + 1, k_best)
    j = jnp.arange(n)
    in_window = ((j > i - window) & (j <= i))[:, None]
    increased = jnp.sum(in_window & (ls > jnp.roll(ls, 1, axis=0)), axis=0)
    halve = (increased <= window * 0.75) | (~reduced & (best_last >= f_best))
    halve = is_check & halve
    reduced = jnp.where(is_check, halve, reduced)
    best_last = jnp.where(is_check, f_best, best_last)
    eta_next = jnp.where(halve, eta / 2, eta)
    x_next = jnp.where(ps(halve), x_best, x_new)
    d_next = jnp.where(ps(halve), d_best, d_new)
    carry = (x_next, x, d_next, eta_next, x_best, d_best, f_best, k_best, ls, reduced, best_last)
    return carry, (losses, eta)

  eta0 = jnp.broadcast_to(step_size, batch).astype(x0.dtype)
  carry = (x_start, x_start, d0, eta0, x_start, d0, f0, jnp.zeros(batch, jnp.int32),
           jnp.zeros((n,) + batch, x0.dtype), jnp.ones(batch, bool), f0)
  is_check, window = autoattack_schedule(n)
  xs = (jnp.arange(n - 1), jnp.asarray(is_check[:-1]), jnp.asarray(window[:-1]))
  carry, (losses, etas) = jax.lax.scan(body, carry, xs, unroll=common.resolve_unroll(unroll))
  x, x_old, d, eta, x_best, _, f_best, k_best, ls, _, _ = carry
  x_last = take_step(n - 1, x, x_old, d, eta)  # The last step: its gradient would go unused.
  last = common.losses(direction, loss_at(n - 1), x_last, labels, unroll)
  f = objective(last)
  better, _ = common.improve(f, f_best)
  x_best = jnp.where(ps(better), x_last, x_best)
  k_best = jnp.where(better, n, k_best)
  f_hist = jnp.concatenate([f0[None], ls[:n - 1], f[None]])
  losses = {t: jnp.concatenate([losses0[t][None], losses[t], last[t][None]]) for t in last}
  return x_best, f_hist, losses, k_best, jnp.concatenate([etas, eta[None]])


def _apgd(loss_fn, direction, *, x0, labels, eps, step_size, momentum, bounds, key, baselines,
          targets, x_init, example_weight, num_steps, start, restart_from_best, per_sample,
          keep_untargeted, norm, variant, unroll):
  threat = threat_lib.by_name(norm)
  loss_at = common.losses_per_step(loss_fn, x0, labels, num_steps, targets, direction,
                                   keep_untargeted)

  x_start = common.start(start, key, x0, eps, bounds, threat, x_init)
  if variant == "autoattack":
    x_best, f_hist, losses, k_best, etas = _autoattack_loop(
        loss_at, direction, threat, x0, x_start, labels, eps, step_size, momentum, bounds,
        baselines, num_steps, unroll)
  else:
    x_best, f_hist, losses, k_best, etas = _reference_loop(
        loss_at, direction, threat, x0, x_start, labels, eps, step_size, momentum, bounds,
        baselines, num_steps, restart_from_best, per_sample, example_weight, unroll)
  return common.AttackResult(x_best, f_hist, common.reported(losses, targets, direction), k_best,
                             etas)


def apgd(loss_fn: directions_lib.LossFn, x: jax.Array, labels: Any, *,
         direction: directions_lib.Direction, eps: Any, bounds: common.Bounds,
         num_steps: int = 10, step_size: Any = None, momentum: float = 0.75,
         baselines: dict[str, Any] | None = None, per_sample: bool = False,
         random_start: bool = False, restart_from_best: bool = False,
         key: jax.Array | None = None, unroll: bool | int | None = None,
         variant: Literal["reference", "autoattack"] = "reference", norm: str = "linf",
         targets: Mapping[str, Any] | None = None, keep_untargeted: bool = False,
         x_init: jax.Array | None = None, example_weight: jax.Array | None = None
         ) -> common.AttackResult:
  """APGD, the reference's variant by default (see the module docstring).

  Args:
    loss_fn: ``loss_fn(x, labels) -> {task: (B,) losses}``.
    x: clean batch (B, ..., C) inside ``bounds``.
    labels: anything ``loss_fn`` needs (a traced pytree).
    direction: a :mod:`mtajax.directions` direction (its objective is ascended).
    eps: radius in input units, scalar or (B,) (traced).
    bounds: per-channel ``(low, high)`` of the valid input box.
    num_steps: N (static); the checkpoints depend on it.
    step_size: initial step η0 (traced); default ε/N (reference) or 2ε (``'autoattack'``).
    momentum: α (0.75 in both).
    baselines: the direction's start-of-attack state (GB-MTA: c_t, scalar or (B,) per task);
      the reference passes the dataset-mean clean loss per task; default ``direction.init`` at
      the start point (paper Algorithm 3).
    per_sample: reference variant: per-sample objective, step sizes and best points instead of
      the reference's batch-level decisions (Q7). The autoattack variant is always per sample.
    random_start: uniform start in the ε-ball (reference variant) or AutoAttack's start
      (``'autoattack'``); needs ``key``.
    restart_from_best: reference variant: continue from the best point one step after a halving
      (the reference's ``revised=True`` ``AAR`` attacks, Q5/Q6).
    key: PRNG key, needed with ``random_start``.
    unroll: ``lax.scan`` unroll; None = measured platform default.
    variant: ``'reference'`` or ``'autoattack'`` (fra31/auto-attack's algorithm).
    norm: ``'linf'`` or ``'l2'`` (steps along D/‖D‖₂, projection on the L2 ball ∩ box).
    targets: ``{task: target map}``: descend those tasks' losses against their targets.
    keep_untargeted: with ``targets``, keep attacking the other tasks untargeted.
    x_init: start from this point (projected into the ball and box).
    example_weight: (B,) weights, 0 for padding: padded images take no part in the reference's
      batch objective.

  Returns:
    :class:`~mtajax.attacks.common.AttackResult` with the best point and (N+1, B) diagnostics.
  """
  if variant not in VARIANTS:
    raise ValueError(f"unknown APGD variant {variant!r}; use one of {', '.join(VARIANTS)}.")
  threat = common.check_inputs(x, eps, bounds, step_size=step_size, random_start_=random_start,
                               key=key, norm=norm, labels=labels, targets=targets,
                               x_init=x_init)
  common.check_steps(num_steps)
  eps = jnp.asarray(eps, x.dtype)
  if step_size is None:
    step_size = 2 * eps if variant == "autoattack" else eps / num_steps
  default_start = "autoattack" if variant == "autoattack" else "uniform"
  args = dict(x0=x, labels=labels, eps=eps, step_size=jnp.asarray(step_size, x.dtype),
              momentum=jnp.asarray(momentum, x.dtype), bounds=bounds, key=key,
              baselines=baselines, targets=targets, x_init=x_init,
              example_weight=example_weight)
  return common.run(_apgd, loss_fn, direction, args, num_steps=num_steps,
                    start=common.start_kind(random_start, x_init, default_start),
                    restart_from_best=restart_from_best, per_sample=per_sample,
                    keep_untargeted=keep_untargeted, norm=threat.name, variant=variant,
                    unroll=unroll)
