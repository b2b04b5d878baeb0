"""Early-stopped PGD, the inner attack of friendly adversarial training (FAT, Zhang et al. 2020) on
dense outputs.

Success of a dense multi-task attack on one example: the mean over the attacked tasks of the
relative loss increase ``(L_t(x) - L_t(x0)) / L_t(x0)`` reaches ``margin`` (0.5 = the attacked
losses grew by half on average). Each example keeps stepping until ``tau`` steps after the first
iterate that succeeds (``tau = 0`` returns the first successful iterate) or ``num_steps`` steps.
Step rule: PGD's ``clip(proj(x + a·sign(D(x))))`` from the clean input.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mtajax import directions as directions_lib
from mtajax.attacks import common
from mtajax.attacks import loop as loop_lib


def relative_increase(losses: dict[str, jax.Array], clean: dict[str, jax.Array],
                      tasks: list[str]) -> jax.Array:
  """Per-example mean over ``tasks`` of ``(L - L0) / L0`` (0 where the clean loss is 0)."""
  terms = [jnp.where(clean[t] > 0, (losses[t] - clean[t]) / jnp.where(clean[t] > 0, clean[t], 1.0),
                     0.0) for t in tasks]
  return sum(terms) / len(terms)


def _init(p):
  x0 = p.args["x0"]
  batch_size = x0.shape[0]
  names = directions_lib.task_names(common.loss_at(p, 0), x0, p.args["labels"])
  return dict(x=x0, clean={t: jnp.zeros((batch_size,), x0.dtype) for t in names},
              succeeded=jnp.zeros((batch_size,), bool),
              budget=jnp.full((batch_size,), p.options["tau"], jnp.int32),
              taken=jnp.zeros((batch_size,), jnp.int32))


def _at_iterate(p, state, i):
  del p
  return state["x"], i


def _step(p, state, evaluation, i):
  """Success at x_i, then a step for the examples still moving."""
  a, x = p.args, state["x"]
  d, losses = evaluation
  losses = common.detached(losses)
  clean = jax.tree.map(lambda c, v: jnp.where(i == 0, v, c), state["clean"], losses)
  tasks = p.direction.tasks(losses)
  succeeded = state["succeeded"] | (relative_increase(losses, clean, tasks) >= a["margin"])
  moving = ~succeeded | (state["budget"] > 0)
  x = jnp.where(common.per_sample(moving, x),
                common.step(x, a["x0"], d, a["step_size"], a["eps"], a["bounds"]), x)
  budget = jnp.where(succeeded & moving, state["budget"] - 1, state["budget"])
  return dict(x=x, clean=clean, succeeded=succeeded, budget=budget,
              taken=state["taken"] + moving.astype(jnp.int32)), losses


def _finish(p, state, outputs):
  _, (losses,), _ = outputs
  a = p.args
  batch = a["x0"].shape[:1]
  baselines = p.direction.init(p.loss_fn, a["x0"], a["labels"],
                               {t: v[0] for t, v in losses.items()})
  return common.AttackResult(state["x"], p.direction.objective(losses, baselines), losses,
                             state["taken"],
                             jnp.broadcast_to(a["step_size"], (p.options["num_steps"],) + batch))


def algorithm(options: dict[str, Any]) -> loop_lib.Algorithm:
  """Early-stopped PGD's pieces (:mod:`mtajax.attacks.loop`)."""
  return loop_lib.Algorithm(_init, (), (loop_lib.Phase(_at_iterate, common.ASCENT, _step),),
                            np.arange(options["num_steps"], dtype=np.int32), (), _finish)


def early_stopped_pgd(loss_fn: directions_lib.LossFn, x: jax.Array, labels: Any, *,
                      direction: directions_lib.Direction, eps: Any, bounds: common.Bounds,
                      num_steps: int = 20, tau: int = 20, margin: float = 0.5,
                      step_size: Any = None, loop: loop_lib.Loop | None = None,
                      unroll: Any = None) -> common.AttackResult:
  """Signed-gradient steps ``clip(proj(x + a·sign(D(x))))`` stopped per example (module doc).

  Args:
    loss_fn: ``loss_fn(x, labels) -> {task: (B,) losses}``.
    x: clean batch inside ``bounds``.
    labels: anything ``loss_fn`` needs.
    direction: a :mod:`mtajax.directions` direction; success is measured on its tasks.
    eps: L∞ radius in input units.
    bounds: per-channel ``(low, high)`` of the valid input box.
    num_steps: K, the maximum number of steps (static).
    tau: τ, the steps an example keeps taking after its first success (static).
    margin: mean relative loss increase that counts as success.
    step_size: default ε/K (the reference I-FGSM step).
    loop: how the iterations run (:mod:`mtajax.attacks.loop`); None = the platform default.
    unroll: the older spelling of ``loop``.

  Returns:
    :class:`~mtajax.attacks.common.AttackResult`; ``best_step`` is the number of steps each
    example took (its returned iterate).
  """
  if not isinstance(num_steps, (int, np.integer)) or num_steps < 1 or tau < 0:
    raise ValueError(f"early-stopped PGD needs num_steps >= 1 and tau >= 0; got {num_steps} and "
                     f"{tau}.")
  common.check_inputs(x, eps, bounds, step_size=step_size)
  eps = jnp.asarray(eps, x.dtype)
  step_size = eps / num_steps if step_size is None else jnp.asarray(step_size, x.dtype)
  args = dict(x0=x, labels=labels, eps=eps, step_size=step_size, bounds=bounds,
              margin=jnp.asarray(margin, x.dtype))
  return common.run(algorithm, loss_fn, direction, args, loop=loop, unroll=unroll,
                    num_steps=num_steps, tau=int(tau))
