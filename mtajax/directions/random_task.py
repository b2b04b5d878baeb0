"""RandomTask: each example ascends the loss of its own task, drawn at random per example.

The choice is a traced (B,) array of task indices (the train step draws it from its PRNG key and
hands it over as the attack's ``index``), so a new draw per batch reuses the compiled attack.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from mtajax.directions import base
from mtajax.directions.base import Direction


@functools.partial(jax.tree_util.register_dataclass, data_fields=["choice"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class RandomTask(Direction):
  """∇ mean_b L_{c_b, b}: example b attacks task c_b (``choice``, indices in loss order).

  Per-image losses (``'image'``): an example's gradient is its own task's alone.
  """
  choice: Any = None  # (B,) int32, traced; None in the static spec (set by ``at``)

  @property
  def name(self) -> str:
    return "random_task"

  def at(self, choice: Any) -> "RandomTask":
    """This direction with the per-example task indices ``choice`` (B,)."""
    return dataclasses.replace(self, choice=jnp.asarray(choice, jnp.int32))

  def objective(self, losses, state=None):
    """Each example's loss of its chosen task (``(..., B)`` losses broadcast against ``choice``)."""
    if self.choice is None:
      raise ValueError("random_task needs its per-example task indices; pass the attack "
                       "index=jax.random.randint(key, (B,), 0, T) (the train recipes do).")
    return sum(jnp.where(self.choice == t, v, 0) for t, v in enumerate(losses.values()))

  def __call__(self, loss_fn, x, labels):
    return base.value_and_grad(lambda losses: jnp.mean(self.objective(losses)), loss_fn, x, labels)


def random_task() -> RandomTask:
  """RandomTask direction (its per-example choice is given at attack time)."""
  return RandomTask()


base.register("random_task", random_task)
