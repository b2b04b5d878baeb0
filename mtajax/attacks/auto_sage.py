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
import numpy as np

from mtajax import directions as directions_lib
from mtajax.attacks import common
from mtajax.attacks import loop as loop_lib
from mtajax.attacks import threat as threat_lib


def sech2(u: jax.Array) -> jax.Array:
  """sech²(u) without overflow."""
  e = jnp.exp(-2.0 * jnp.abs(u))
  return 4.0 * e / (1.0 + e) ** 2


def _task_grads(p, x, k):
  return p.direction.task_grads(common.loss_at(p, k), x, p.args["labels"])


def _lookahead_grad(p, x1, k):
  """The look-ahead gradient at x1: the direction's D (``'all'``), or the reference's bug Q1
  (``'last_task'``: T times the last task's alone)."""
  loss, labels = common.loss_at(p, k), p.args["labels"]
  if p.options["lookahead"] == "all":
    return p.direction(loss, x1, labels)[0]
  # x1, not args["x0"]: an evaluation reads only EVALUATION_ARGS (the Python loop passes no x0).
  names = directions_lib.task_names(loss, x1, labels)
  only_last = lambda x, l: {names[-1]: loss(x, l)[names[-1]]}  # pylint: disable=unnecessary-lambda-assignment
  return len(names) * p.direction(only_last, x1, labels)[0]


_task_grads.reads = ("context_steps",)
_lookahead_grad.reads = ("context_steps", "lookahead")
TASK_GRADS = loop_lib.Evaluation("task_grads", _task_grads)  # (T, B, ...) g_t and the losses
LOOKAHEAD = loop_lib.Evaluation("lookahead", _lookahead_grad)


def _init(p):
  x0 = p.args["x0"]
  names = directions_lib.task_names(common.loss_at(p, 0), x0, p.args["labels"])
  return dict(x=x0, a=jnp.ones((len(names),) + x0.shape, x0.dtype), g=jnp.zeros_like(x0),
              dm=jnp.zeros((len(names),) + x0.shape, x0.dtype), s=jnp.zeros_like(x0), x1=x0)


def _at_iterate(p, state, k):
  del p
  return state["x"], k


def _at_lookahead(p, state, k):
  del p
  return state["x1"], k


def _look_ahead(p, state, evaluation, k):
  """S = Σ_t A_t·g_t and the look-ahead point x1 = clip(proj(x + s·sign(S)))."""
  del k
  a = p.args
  dm, losses = evaluation
  s = jnp.sum(state["a"] * dm, axis=0)
  x1 = common.step(state["x"], a["x0"], s, a["step_size"], a["eps"], a["bounds"])
  return {**state, "dm": dm, "s": s, "x1": x1}, losses


def _step(p, state, lookahead_grad, k):
  """The weights' update from the look-ahead gradient, then the signed step along Σ_t A_t·g_t."""
  del k
  a, dm = p.args, state["dm"]
  step = common.per_sample(a["step_size"], a["x0"])  # A (B,) step against the (T, B, ...) A.
  dfdx = -lookahead_grad
  w = state["a"] - a["lr"] * dfdx[None] * (a["kappa"] * step * dm * sech2(a["kappa"] * state["s"])[None])
  g = a["decay"] * state["g"] + jnp.sum(w * dm, axis=0)
  x = common.step(state["x"], a["x0"], g, a["step_size"], a["eps"], a["bounds"])
  return {**state, "x": x, "a": w, "g": g}, None


def _finish(p, state, outputs):
  _, (losses, _), _ = outputs
  a, num_steps = p.args, p.options["num_steps"]
  baselines = p.direction.init(p.loss_fn, a["x0"], a["labels"], {t: v[0] for t, v in losses.items()})
  batch = a["x0"].shape[:1]
  return common.AttackResult(state["x"], p.direction.objective(losses, baselines), losses,
                             jnp.full(batch, num_steps, jnp.int32),
                             jnp.broadcast_to(a["step_size"], (num_steps,) + batch))


def algorithm(options: dict[str, Any]) -> loop_lib.Algorithm:
  """Auto-SAGE's pieces (:mod:`mtajax.attacks.loop`): two evaluations per step."""
  body = (loop_lib.Phase(_at_iterate, TASK_GRADS, _look_ahead),
          loop_lib.Phase(_at_lookahead, LOOKAHEAD, _step))
  return loop_lib.Algorithm(_init, (), body, np.arange(options["num_steps"], dtype=np.int32),
                            (), _finish)


def auto_sage(loss_fn: directions_lib.LossFn, x: jax.Array, labels: Any, *,
              direction: directions_lib.Direction, eps: Any, bounds: common.Bounds,
              num_steps: int = 10, step_size: Any = None, lr: float = 10.0, kappa: float = 50.0,
              decay: float = 0.0, lookahead: Literal["all", "last_task"] = "all",
              loop: loop_lib.Loop | None = None, unroll: Any = None) -> common.AttackResult:
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
    loop: how the iterations run (:mod:`mtajax.attacks.loop`: ``'unrolled'``, ``'rolled'``,
      ``'python'``); None = the platform default.
    unroll: the older spelling of ``loop`` (``'host'`` = ``'python'``, True = ``'unrolled'``,
      an int = a ``lax.scan`` unrolled that many steps).

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
  return common.run(algorithm, loss_fn, direction, args, loop=loop, unroll=unroll,
                    num_steps=num_steps, lookahead=lookahead)
