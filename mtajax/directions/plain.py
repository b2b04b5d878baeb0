"""The plain directions: Single-x, Total and SignTotal (reference-spec §4).

==============  ==============================================  =========================
direction       D(x)                                            reference loss reduction
==============  ==============================================  =========================
``single(t)``   ∇ mean_b L_t,b                                  ``'pooled'`` (Base)
``total()``     ∇ Σ_t mean_b L_t,b                              ``'pooled'`` (Base)
``sign_total()``Σ_t sign(∇ mean_b L_t,b)  (per-sample vote)     ``'image'`` (MTL)
==============  ==============================================  =========================
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from mtajax.directions import base
from mtajax.directions.base import Direction, GradMethod


@dataclasses.dataclass(frozen=True)
class Single(Direction):
  """Single-x: the gradient of one task's loss."""
  task: str
  reduction = "pooled"

  @property
  def name(self) -> str:
    return f"single_{self.task}"

  def __call__(self, loss_fn, x, labels):
    def objective(losses):
      if self.task not in losses:
        raise ValueError(f"unknown task {self.task!r} for Single; the loss function returns "
                         f"{list(losses)}.")
      return jnp.mean(losses[self.task])
    return base.value_and_grad(objective, loss_fn, x, labels)

  def objective(self, losses, state=None):
    return losses[self.task]

  def tasks(self, losses):
    return [self.task]


@dataclasses.dataclass(frozen=True)
class Total(Direction):
  """Total: the gradient of the sum of all task losses."""
  reduction = "pooled"
  sums_task_grads = True

  @property
  def name(self) -> str:
    return "total"

  def __call__(self, loss_fn, x, labels):
    return base.value_and_grad(lambda losses: jnp.sum(base.batch_means(losses)), loss_fn, x, labels)


@dataclasses.dataclass(frozen=True)
class SignTotal(Direction):
  """SignTotal: per element, the sum over tasks of the sign of each task's gradient (a vote)."""
  method: GradMethod = "loop"

  @property
  def name(self) -> str:
    return "sign_total"

  def __call__(self, loss_fn, x, labels):
    grads, losses = base.per_task_grads(loss_fn, x, labels, self.method)
    return jnp.sum(jnp.sign(grads), axis=0), losses


def single(task: str) -> Single:
  """Single-x direction for ``task``."""
  return Single(task)


def total() -> Total:
  """Total direction."""
  return Total()


def sign_total(method: GradMethod = "loop") -> SignTotal:
  """SignTotal direction."""
  return SignTotal(method)


base.register_single(single)
base.register("total", total)
base.register("sign_total", sign_total)
