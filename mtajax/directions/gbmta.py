"""GB-MTA (DGBA, reference-spec §4): Σ_t ∇ mean_b log L_t,b = Σ_t (1/B) ∇L_t,b / L_t,b.

Reference loss reduction ``'image'`` (MTL). GB-MTA is computed with ONE backward pass through the
log trick; terms whose loss is not finite or not above ``min_loss`` (a task already at zero loss,
say) get weight 0 instead of producing inf/NaN (a NaN loss usually comes with NaN gradients that
no shared backward pass can separate; the attacks leave input elements with a NaN direction unmoved
and report the NaN loss in their diagnostics). Each direction also defines the APGD objective it
ascends (spec §5.3); GB-MTA's, Σ_t (L_t − c_t)/c_t, is shared by the balancing directions.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp

from mtajax.directions import base
from mtajax.directions.base import Array, Direction


@dataclasses.dataclass(frozen=True)
class GBMTA(Direction):
  """GB-MTA: Σ_t ∇L_t / L_t per sample at the current iterate, in one backward pass.

  Attributes:
    min_loss: a term is used only where its loss is finite and > ``min_loss``; other terms
      (a task at exactly zero loss, a non-finite loss) get weight 0 instead of inf/NaN.
    method: ``'log'`` (one backward via ∇ log L = ∇L / L) or ``'per_task'`` (T backward passes,
      the reference's way; identical up to float rounding).
  """
  min_loss: float = 0.0
  method: Literal["log", "per_task"] = "log"
  sums_task_grads = True

  @property
  def name(self) -> str:
    return "gbmta"

  def usable(self, v: Array) -> Array:
    """(same shape as ``v``) bool: the loss terms GB-MTA uses (finite and > ``min_loss``)."""
    return jnp.isfinite(v) & (v > self.min_loss)

  def task_grads(self, loss_fn, x, labels):
    """Per-task gradients divided per sample by the current loss: (1/B)·∇L_t,b / L_t,b."""
    grads, losses = base.per_task_grads(loss_fn, x, labels)
    stacked = jax.lax.stop_gradient(jnp.stack(list(losses.values())))  # (T, B)
    ok = self.usable(stacked)
    weights = jnp.where(ok, 1.0 / jnp.where(ok, stacked, 1.0), 0.0)
    ok, weights = jax.vmap(base.per_sample)(ok, grads), jax.vmap(base.per_sample)(weights, grads)
    return jnp.where(ok, weights * grads, 0.0), losses

  def __call__(self, loss_fn, x, labels):
    if self.method == "per_task":
      grads, losses = self.task_grads(loss_fn, x, labels)
      return jnp.sum(grads, axis=0), losses
    if self.method != "log":
      raise ValueError(f"unknown GB-MTA method {self.method!r}; use 'log' or 'per_task'.")

    def objective(losses):
      total = 0.0
      for v in losses.values():
        ok = self.usable(jax.lax.stop_gradient(v))
        total += jnp.mean(jnp.where(ok, jnp.log(jnp.where(ok, v, 1.0)), 0.0))
      return total
    return base.value_and_grad(objective, loss_fn, x, labels)

  def init(self, loss_fn, x0, labels, losses0):
    """The baselines c_t: the losses at the start point (paper Algorithm 3), as constants."""
    return {t: jax.lax.stop_gradient(v) for t, v in losses0.items()}

  def objective(self, losses, baselines=None):
    """Σ_t (L_t − c_t) / c_t over the usable terms.

    A term counts where its baseline c_t and its loss L_t are finite and c_t > ``min_loss``
    (the direction's own rule); a task with a zero clean loss (an image without a valid pixel)
    gets weight 0 instead of making the objective (0 − 0)/0 = NaN.
    """
    if baselines is None:
      raise ValueError("the GB-MTA objective needs per-task baseline losses c_t; pass baselines="
                       "{task: clean loss} (the attacks default to the clean loss at x0).")
    total = 0
    for t, v in losses.items():
      c = jnp.asarray(baselines[t], v.dtype)
      ok = self.usable(c)
      c = jnp.where(ok, c, 1.0)
      total = total + (jnp.where(ok & jnp.isfinite(v), v, c) - c) / c  # 0 for unusable terms.
    return total

  def descend(self, loss):
    """1/L: GB-MTA's Σ_t ∇ log(1/L_t) then descends the balanced sum of log target losses."""
    ok = self.usable(loss)
    return jnp.where(ok, 1.0 / jnp.where(ok, loss, 1.0), 0.0)


def gbmta(min_loss: float = 0.0, method: Literal["log", "per_task"] = "log") -> GBMTA:
  """GB-MTA (DGBA) direction."""
  return GBMTA(min_loss, method)


base.register("gbmta", gbmta)
