"""FGSM (reference-spec §5.1): one step of size ε (FGM along D/‖D‖₂ with ``norm='l2'``)."""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from mtajax import directions as directions_lib
from mtajax.attacks import common
from mtajax.attacks import loop as loop_lib
from mtajax.attacks import threat as threat_lib


def _init(p):
  return {"x": p.args["x0"]}


def _at_clean(p, state, xs):
  del p, xs
  return state["x"], 0


def _step(p, state, evaluation, xs):
  del xs
  a = p.args
  d, losses = evaluation
  x_adv = common.step(a["x0"], a["x0"], d, a["eps"], a["eps"], a["bounds"],
                      threat_lib.by_name(p.options["norm"]))
  return {**state, "x": x_adv}, losses


def _finish(p, state, outputs):
  (losses,), _, _ = outputs
  a = p.args
  stacked = {t: v[None] for t, v in losses.items()}
  baselines = p.direction.init(common.loss_at(p, 0), a["x0"], a["labels"], losses)
  batch = a["x0"].shape[:1]
  return common.AttackResult(state["x"], p.direction.objective(stacked, baselines),
                             common.reported(stacked, a["targets"], p.direction),
                             jnp.ones(batch, jnp.int32),
                             jnp.broadcast_to(a["eps"] * jnp.ones(batch, a["x0"].dtype),
                                              (1,) + batch))


def algorithm(options: dict[str, Any]) -> loop_lib.Algorithm:
  """FGSM's pieces (:mod:`mtajax.attacks.loop`): one evaluation, one step."""
  del options
  return loop_lib.Algorithm(_init, (loop_lib.Phase(_at_clean, common.ASCENT, _step),), (), (),
                            (), _finish)


def fgsm(loss_fn: directions_lib.LossFn, x: jax.Array, labels: Any, *,
         direction: directions_lib.Direction, eps: Any, bounds: common.Bounds,
         norm: str = "linf", targets: Mapping[str, Any] | None = None,
         keep_untargeted: bool = False, loop: loop_lib.Loop | None = None
         ) -> common.AttackResult:
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
    loop: ``'python'`` runs the evaluation as the program the other attacks share
      (:mod:`mtajax.attacks.loop`); otherwise one program.

  Returns:
    :class:`~mtajax.attacks.common.AttackResult` with diagnostics at the clean input.
  """
  threat = common.check_inputs(x, eps, bounds, norm=norm, labels=labels, targets=targets)
  args = dict(x0=x, labels=labels, eps=jnp.asarray(eps, x.dtype), bounds=bounds, targets=targets)
  return common.run(algorithm, loss_fn, direction, args, loop=loop,
                    keep_untargeted=keep_untargeted, norm=threat.name, num_steps=1)
