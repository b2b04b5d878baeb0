"""PGD — the reference's I-FGSM (reference-spec §5.2) with optional random start and best iterate.

Step rule: ``x ← clip(proj(x + a·unit(D(x))))`` (unit = sign for L∞, D/‖D‖₂ for L2).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mtajax import directions as directions_lib
from mtajax.attacks import common
from mtajax.attacks import loop as loop_lib
from mtajax.attacks import threat as threat_lib


def _threat(p):
  return threat_lib.by_name(p.options["norm"])


def _init(p):
  a = p.args
  x = common.start(p.options["start"], a["key"], a["x0"], a["eps"], a["bounds"], _threat(p),
                   a["x_init"])
  batch = a["x0"].shape[:1]
  return dict(x=x, x_best=x, f_best=jnp.full(batch, -jnp.inf, x.dtype),
              k_best=jnp.zeros(batch, jnp.int32), baselines=a["baselines"])


def _at_clean(p, state, xs):
  del state, xs
  return p.args["x0"], 0


def _set_baselines(p, state, losses0, xs):
  """The direction's state from the losses at the clean input (best-iterate choice)."""
  del xs
  a = p.args
  baselines = p.direction.init(common.loss_at(p, 0), a["x0"], a["labels"],
                               common.detached(losses0))
  return {**state, "baselines": baselines}, None


def _at_iterate(p, state, k):
  del p
  return state["x"], k


def _step(p, state, evaluation, k):
  """Best-point bookkeeping at x_k, then x_{k+1} = clip(proj(x_k + a·unit(D)))."""
  d, losses = evaluation
  a, x = p.args, state["x"]
  if p.options["return_best"]:
    better, f_best = common.improve(p.direction.objective(losses, state["baselines"]),
                                    state["f_best"])
    state = {**state, "f_best": f_best,
             "x_best": jnp.where(common.per_sample(better, x), x, state["x_best"]),
             "k_best": jnp.where(better, k, state["k_best"])}
  x = common.step(x, a["x0"], d, a["step_size"], a["eps"], a["bounds"], _threat(p))
  return {**state, "x": x}, losses


def _at_last(p, state, xs):
  del xs
  return state["x"], p.options["num_steps"] - 1


def _choose_best(p, state, last, xs):
  """The last iterate's objective against the best so far."""
  del xs
  x = state["x"]
  better, _ = common.improve(p.direction.objective(last, state["baselines"]), state["f_best"])
  return {**state, "x": jnp.where(common.per_sample(better, x), x, state["x_best"]),
          "k_best": jnp.where(better, p.options["num_steps"], state["k_best"])}, last


def _finish(p, state, outputs):
  _, (losses,), last = outputs
  a, num_steps = p.args, p.options["num_steps"]
  batch = a["x0"].shape[:1]
  if p.options["return_best"]:
    losses = {t: jnp.concatenate([v, last[0][t][None]]) for t, v in losses.items()}
    k_best = state["k_best"]
  else:
    k_best = jnp.full(batch, num_steps, jnp.int32)
  baselines = state["baselines"]
  if baselines is None:
    baselines = p.direction.init(p.loss_fn, a["x0"], a["labels"],
                                 {t: v[0] for t, v in losses.items()})
  return common.AttackResult(
      state["x"], p.direction.objective(losses, baselines),
      common.reported(losses, a["targets"], p.direction), k_best,
      jnp.broadcast_to(a["step_size"] * jnp.ones(batch, a["x0"].dtype), (num_steps,) + batch))


def algorithm(options: dict[str, Any]) -> loop_lib.Algorithm:
  """PGD's pieces (:mod:`mtajax.attacks.loop`); ``options``: ``num_steps``, ``start``,
  ``return_best``, ``norm`` (and ``args['baselines']`` decides the first evaluation)."""
  best = options["return_best"]
  first = (loop_lib.Phase(_at_clean, common.LOSSES, _set_baselines),) if best and not options[
      "baselines_given"] else ()
  last = (loop_lib.Phase(_at_last, common.LOSSES, _choose_best),) if best else ()
  return loop_lib.Algorithm(
      _init, first, (loop_lib.Phase(_at_iterate, common.ASCENT, _step),),
      np.arange(options["num_steps"], dtype=np.int32), last, _finish)


def pgd(loss_fn: directions_lib.LossFn, x: jax.Array, labels: Any, *,
        direction: directions_lib.Direction, eps: Any, bounds: common.Bounds,
        num_steps: int = 10, step_size: Any = None, random_start: bool = False,
        return_best: bool = False, key: jax.Array | None = None,
        baselines: dict[str, Any] | None = None, loop: loop_lib.Loop | None = None,
        unroll: Any = None,
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
    loop: how the iterations run (:mod:`mtajax.attacks.loop`: ``'unrolled'``, ``'rolled'``,
      ``'python'``); None = the platform default.
    unroll: the older spelling of ``loop`` (``'host'`` = ``'python'``, True = ``'unrolled'``,
      an int = a ``lax.scan`` unrolled that many steps).
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
  return common.run(algorithm, loss_fn, direction, args, loop=loop, unroll=unroll,
                    num_steps=num_steps, start=common.start_kind(random_start, x_init),
                    return_best=return_best, baselines_given=baselines is not None,
                    keep_untargeted=keep_untargeted, norm=threat.name)
