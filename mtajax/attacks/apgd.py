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
from mtajax.attacks import loop as loop_lib
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


def _objective(p, baselines):
  """The objective APGD ascends: the direction's, per sample or as the reference's batch mean."""
  def objective(losses):
    f = p.direction.objective(losses, baselines)
    if p.options["per_sample"] or p.options["variant"] == "autoattack":
      return f
    return common.batch_objective(f, p.args["example_weight"])
  return objective


def _threat(p):
  return threat_lib.by_name(p.options["norm"])


def _ps(p, v):
  return common.per_sample(v, p.args["x0"])


def _init(p):
  a = p.args
  return {"x": common.start(p.options["start"], a["key"], a["x0"], a["eps"], a["bounds"],
                            _threat(p), a["x_init"])}


def _at_start(p, state, xs):
  del p, xs
  return state["x"], 0


def _at_iterate(p, state, xs):
  del p
  return state["x"], xs[0]


def _at_last(p, state, xs):
  del xs
  return state["x"], p.options["num_steps"] - 1


def _begin(p, state, evaluation):
  """The direction's state and the objective at the start point."""
  d0, losses0 = evaluation
  a, x_start = p.args, state["x"]
  baselines = a["baselines"]
  if baselines is None:
    baselines = p.direction.init(common.loss_at(p, 0), x_start, a["labels"], losses0)
  f0 = _objective(p, baselines)(losses0)
  eta0 = jnp.broadcast_to(a["step_size"], f0.shape).astype(f0.dtype)
  return d0, losses0, baselines, f0, eta0


# The reference variant: state x_prev, x (the iterate to evaluate), best point and direction,
# objective and step-size histories, and the restart decided at the previous checkpoint.

def _update_best(k, x, d, f, state):
  better, f_best = common.improve(f, state["f_best"], strict=k == 1)  # First one strict (Q8).
  ps = lambda v: common.per_sample(v, x)  # pylint: disable=unnecessary-lambda-assignment
  return {**state, "x_best": jnp.where(ps(better), x, state["x_best"]),
          "d_best": jnp.where(ps(better), d, state["d_best"]), "f_best": f_best,
          "k_best": jnp.where(better, k, state["k_best"])}


def _reference_first(p, state, evaluation, xs):
  del xs
  a, n, x_start = p.args, p.options["num_steps"], state["x"]
  d0, losses0, baselines, f0, eta0 = _begin(p, state, evaluation)
  f_hist = jnp.zeros((n + 1,) + f0.shape, f0.dtype).at[0].set(f0)
  eta_hist = jnp.zeros_like(f_hist).at[0].set(eta0).at[1].set(eta0)
  x1 = common.step(x_start, a["x0"], d0, _ps(p, eta0), a["eps"], a["bounds"], _threat(p))
  return dict(x_prev=x_start, x=x1, x_best=x_start, d_best=d0, f_best=f0,
              k_best=jnp.zeros(f0.shape, jnp.int32), f_hist=f_hist, eta_hist=eta_hist,
              pending=jnp.zeros(f0.shape, bool), baselines=baselines), losses0


def _reference_step(p, state, evaluation, xs):
  """Bookkeeping at x_k, the checkpoint's halving decision, and the momentum step."""
  k, is_check, prev = xs
  a, n, threat = p.args, p.options["num_steps"], _threat(p)
  x0, x_prev, x_cur = a["x0"], state["x_prev"], state["x"]
  d, losses = evaluation
  f = _objective(p, state["baselines"])(losses)
  f_hist = state["f_hist"].at[k].set(f)
  state = _update_best(k, x_cur, d, f, {**state, "f_hist": f_hist})
  if p.options["restart_from_best"]:  # Halving decided at the previous checkpoint: the best.
    x_cur = jnp.where(_ps(p, state["pending"]), state["x_best"], x_cur)
    d = jnp.where(_ps(p, state["pending"]), state["d_best"], d)
  i = jnp.arange(n)
  window = ((i >= prev) & (i < k))[:, None]
  improved = jnp.sum(window & (f_hist[1:] > f_hist[:-1]), axis=0)
  cond1 = improved < 0.75 * (k - prev)
  eta_hist = state["eta_hist"]
  cond2 = (eta_hist[prev] == eta_hist[k]) & (f_hist[prev] == f_hist[k])
  halve = is_check & (cond1 | cond2)
  eta = eta_hist[k]
  eta_hist = eta_hist.at[k + 1].set(jnp.where(halve, eta / 2, eta))
  momentum = a["momentum"]
  z = threat.project(x_cur + _ps(p, eta) * threat.unit(d), x0, a["eps"])
  x_new = x_cur + momentum * (z - x_cur) + (1 - momentum) * (x_cur - x_prev)
  x_new = common.clip(threat.project(x_new, x0, a["eps"]), a["bounds"])
  return {**state, "x_prev": x_cur, "x": x_new, "eta_hist": eta_hist,
          "pending": halve & p.options["restart_from_best"]}, losses


def _reference_last(p, state, last, xs):
  del xs
  n = p.options["num_steps"]
  f = _objective(p, state["baselines"])(last)
  state = {**state, "f_hist": state["f_hist"].at[n].set(f)}
  return _update_best(n, state["x"], state["d_best"], f, state), last


def _reference_finish(p, state, outputs):
  (losses0,), (losses,), (last,) = outputs
  losses = {t: jnp.concatenate([losses0[t][None], losses[t], last[t][None]]) for t in last}
  return common.AttackResult(state["x_best"], state["f_hist"],
                             common.reported(losses, p.args["targets"], p.direction),
                             state["k_best"], state["eta_hist"][:p.options["num_steps"]])


# The AutoAttack variant: x (the iterate to evaluate next, already stepped to), the point it was
# stepped from and its predecessor, the direction and step there, the best point, the objective
# history and the checkpoint state.

def _take_step(p, i, x, x_old, d, eta):
  a, threat = p.args, _threat(p)

  def project(v):
    return common.clip(threat.project(v, a["x0"], a["eps"]), a["bounds"])

  m = jnp.where(i == 0, 1.0, a["momentum"]).astype(a["x0"].dtype)
  z = project(x + _ps(p, eta) * threat.unit(d))
  return project(x + (z - x) * m + (x - x_old) * (1 - m))


def _autoattack_first(p, state, evaluation, xs):
  del xs
  n, x_start = p.options["num_steps"], state["x"]
  d0, losses0, baselines, f0, eta0 = _begin(p, state, evaluation)
  batch = f0.shape
  carry = dict(x_from=x_start, x_old=x_start, d=d0, eta=eta0, x_best=x_start, d_best=d0,
               f_best=f0, k_best=jnp.zeros(batch, jnp.int32),
               ls=jnp.zeros((n,) + batch, x_start.dtype), reduced=jnp.ones(batch, bool),
               best_last=f0, baselines=baselines, f0=f0)
  return {**carry, "x": _take_step(p, 0, x_start, x_start, d0, eta0)}, losses0


def _autoattack_step(p, state, evaluation, xs):
  """Bookkeeping at the new iterate x_{i+1}, the checkpoint's decision, and the next step."""
  i, is_check, window = xs
  n = p.options["num_steps"]
  x_new = state["x"]
  d_new, losses = evaluation
  f = p.direction.objective(losses, state["baselines"])
  ls = state["ls"].at[i].set(f)
  better, f_best = common.improve(f, state["f_best"])
  x_best = jnp.where(_ps(p, better), x_new, state["x_best"])
  d_best = jnp.where(_ps(p, better), d_new, state["d_best"])
  k_best = jnp.where(better, i + 1, state["k_best"])
  j = jnp.arange(n)
  in_window = ((j > i - window) & (j <= i))[:, None]
  increased = jnp.sum(in_window & (ls > jnp.roll(ls, 1, axis=0)), axis=0)
  halve = (increased <= window * 0.75) | (~state["reduced"] & (state["best_last"] >= f_best))
  halve = is_check & halve
  reduced = jnp.where(is_check, halve, state["reduced"])
  best_last = jnp.where(is_check, f_best, state["best_last"])
  eta = state["eta"]
  eta_next = jnp.where(halve, eta / 2, eta)
  x_next = jnp.where(_ps(p, halve), x_best, x_new)
  d_next = jnp.where(_ps(p, halve), d_best, d_new)
  state = {**state, "x_from": x_next, "x_old": state["x_from"], "d": d_next, "eta": eta_next,
           "x_best": x_best, "d_best": d_best, "f_best": f_best, "k_best": k_best, "ls": ls,
           "reduced": reduced, "best_last": best_last}
  x = _take_step(p, i + 1, x_next, state["x_old"], d_next, eta_next)
  return {**state, "x": x}, (losses, eta)


def _autoattack_last(p, state, last, xs):
  """The last step's point (its gradient would go unused): the objective only."""
  del xs
  f = p.direction.objective(last, state["baselines"])
  better, _ = common.improve(f, state["f_best"])
  return {**state, "x_best": jnp.where(_ps(p, better), state["x"], state["x_best"]),
          "k_best": jnp.where(better, p.options["num_steps"], state["k_best"]), "f_last": f}, last


def _autoattack_finish(p, state, outputs):
  (losses0,), ((losses, etas),), (last,) = outputs
  n = p.options["num_steps"]
  f_hist = jnp.concatenate([state["f0"][None], state["ls"][:n - 1], state["f_last"][None]])
  losses = {t: jnp.concatenate([losses0[t][None], losses[t], last[t][None]]) for t in last}
  return common.AttackResult(state["x_best"], f_hist,
                             common.reported(losses, p.args["targets"], p.direction),
                             state["k_best"], jnp.concatenate([etas, state["eta"][None]]))


def algorithm(options: dict[str, Any]) -> loop_lib.Algorithm:
  """APGD's pieces (:mod:`mtajax.attacks.loop`) for ``options['variant']``."""
  n = options["num_steps"]
  if options["variant"] == "autoattack":
    is_check, window = autoattack_schedule(n)
    schedule = (np.arange(n - 1, dtype=np.int32), is_check[:-1], window[:-1])
    first, step, last, finish = (_autoattack_first, _autoattack_step, _autoattack_last,
                                 _autoattack_finish)
  else:
    schedule = _schedule(n)
    first, step, last, finish = (_reference_first, _reference_step, _reference_last,
                                 _reference_finish)
  return loop_lib.Algorithm(
      _init, (loop_lib.Phase(_at_start, common.ASCENT, first),),
      (loop_lib.Phase(_at_iterate, common.ASCENT, step),), schedule,
      (loop_lib.Phase(_at_last, common.LOSSES, last),), finish)


def apgd(loss_fn: directions_lib.LossFn, x: jax.Array, labels: Any, *,
         direction: directions_lib.Direction, eps: Any, bounds: common.Bounds,
         num_steps: int = 10, step_size: Any = None, momentum: float = 0.75,
         baselines: dict[str, Any] | None = None, per_sample: bool = False,
         random_start: bool = False, restart_from_best: bool = False,
         key: jax.Array | None = None, loop: loop_lib.Loop | None = None, unroll: Any = None,
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
    loop: how the iterations run (:mod:`mtajax.attacks.loop`: ``'unrolled'``, ``'rolled'``,
      ``'python'``); None = the platform default.
    unroll: the older spelling of ``loop`` (``'host'`` = ``'python'``, True = ``'unrolled'``,
      an int = a ``lax.scan`` unrolled that many steps).
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
  return common.run(algorithm, loss_fn, direction, args, loop=loop, unroll=unroll,
                    num_steps=num_steps,
                    start=common.start_kind(random_start, x_init, default_start),
                    restart_from_best=restart_from_best, per_sample=per_sample,
                    keep_untargeted=keep_untargeted, norm=threat.name, variant=variant)
