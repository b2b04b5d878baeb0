"""Early-stopped PGD for friendly adversarial training (FAT, Zhang et al. 2020) on dense outputs.

Success of a dense multi-task attack on one example: the mean over the attacked tasks of the
relative loss increase ``(L_t(x) - L_t(x0)) / L_t(x0)`` reaches ``margin`` (0.5 = the attacked
losses grew by half on average). Each example keeps stepping until ``tau`` steps after the first
iterate that succeeds (``tau = 0`` returns the first successful iterate) or ``num_steps`` steps.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from mtajax import directions as directions_lib
from mtajax.attacks import common


def relative_increase(losses: dict[str, jax.Array], clean: dict[str, jax.Array],
                      tasks: list[str]) -> jax.Array:
  """Per-example mean over ``tasks`` of ``(L - L0) / L0`` (0 where the clean loss is 0)."""
  terms = [jnp.where(clean[t] > 0, (losses[t] - clean[t]) / jnp.where(clean[t] > 0, clean[t], 1.0),
                     0.0) for t in tasks]
  return sum(terms) / len(terms)


def early_stopped_pgd(loss_fn: directions_lib.LossFn, x0: jax.Array, labels: Any, *,
                      direction: directions_lib.Direction, eps: Any, bounds: common.Bounds,
                      num_steps: int = 20, tau: int = 20, margin: float = 0.5,
                      step_size: Any = None, unroll: bool | int | None = None
                      ) -> tuple[jax.Array, jax.Array]:
  """Signed-gradient steps ``clip(proj(x + a·sign(D(x))))`` stopped per example as described above.

  Args:
    loss_fn: ``loss_fn(x, labels) -> {task: (B,) losses}``.
    x0: clean batch inside ``bounds``.
    labels: anything ``loss_fn`` needs.
    direction: a :mod:`mtajax.directions` direction; success is measured on its tasks.
    eps: L∞ radius in input units.
    bounds: per-channel ``(low, high)`` of the valid input box.
    num_steps: K, the maximum number of steps (static).
    tau: τ, the steps an example keeps taking after its first success (static).
    margin: mean relative loss increase that counts as success.
    step_size: default ε/K (the reference I-FGSM step).
    unroll: ``lax.scan`` unroll; None = platform default.

  Returns:
    The adversarial batch and the (B,) number of steps each example took.
  """
  if num_steps < 1 or tau < 0:
    raise ValueError(f"Need num_steps >= 1 and tau >= 0, got {num_steps} and {tau}.")
  eps = jnp.asarray(eps, x0.dtype)
  step_size = eps / num_steps if step_size is None else jnp.asarray(step_size, x0.dtype)
  batch_size = x0.shape[0]

  def body(carry, i):
    x, clean, succeeded, budget, taken = carry
    d, losses = direction(loss_fn, x, labels)
    losses = common.detached(losses)
    clean = jax.tree.map(lambda c, v: jnp.where(i == 0, v, c), clean, losses)
    tasks = direction.tasks(losses)
    succeeded = succeeded | (relative_increase(losses, clean, tasks) >= margin)
    moving = ~succeeded | (budget > 0)
    x = jnp.where(common.per_sample(moving, x), common.step(x, x0, d, step_size, eps, bounds), x)
    budget = jnp.where(succeeded & moving, budget - 1, budget)
    return (x, clean, succeeded, budget, taken + moving.astype(jnp.int32)), None

  names = directions_lib.task_names(loss_fn, x0, labels)
  clean = {t: jnp.zeros((batch_size,), x0.dtype) for t in names}
  init = (x0, clean, jnp.zeros((batch_size,), bool), jnp.full((batch_size,), tau, jnp.int32),
          jnp.zeros((batch_size,), jnp.int32))
  (x, *_, taken), _ = jax.lax.scan(body, init, jnp.arange(num_steps),
                                   unroll=common.resolve_unroll(unroll))
  return x, taken
