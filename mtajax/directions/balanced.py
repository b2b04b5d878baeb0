"""The gradient-balancing rules of :mod:`mtajax.directions.balancing` as attack directions.

Each balancer is a registered direction: D_b = Σ_t α_t,b g_t,b per image from the T per-task input
gradients (one forward, T pullbacks), with per-image losses (reduction 'image', as GB-MTA), and
GB-MTA's scale-free objective Σ_t (L_t − c_t)/c_t (c_t: the start-of-attack losses), so that APGD's
step-size rule and best-iterate selection compare the directions on one objective.
"""

from __future__ import annotations

import abc
import dataclasses

import jax

from mtajax.directions import balancing
from mtajax.directions import base
from mtajax.directions.base import Array, Direction
# A name, not the module: the package's gbmta attribute is the factory function.
from mtajax.directions.gbmta import GBMTA


@dataclasses.dataclass(frozen=True)
class Balanced(Direction):
  """Base class of the balancing directions: subclasses give the per-image weight rule."""

  reduction = "image"

  @abc.abstractmethod
  def weights(self, m: Array) -> Array:
    """Task weights (T,) from one image's Gram matrix (T, T)."""

  def __call__(self, loss_fn, x, labels):
    grads, losses = base.per_task_grads(loss_fn, x, labels)

    def one(g):  # g: (T, ...) one image's task gradients
      return balancing.combine(g, self.weights(balancing.gram(g)))
    return jax.vmap(one, in_axes=1)(grads), losses

  def init(self, loss_fn, x0, labels, losses0):
    """GB-MTA's state: the start-of-attack losses c_t as constants."""
    return GBMTA().init(loss_fn, x0, labels, losses0)

  def objective(self, losses, state=None):
    """GB-MTA's objective Σ_t (L_t − c_t)/c_t per sample, c_t from :meth:`init`."""
    return GBMTA().objective(losses, state)


@dataclasses.dataclass(frozen=True)
class MGDA(Balanced):
  """MGDA: the min-norm point of the convex hull of the image's task gradients."""

  @property
  def name(self) -> str:
    return "mgda"

  def weights(self, m):
    return balancing.mgda_weights(m)


@dataclasses.dataclass(frozen=True)
class PCGrad(Balanced):
  """PCGrad. Attributes: seed: None = tasks met in loss order; an int = one random order per task,
  drawn once from ``PRNGKey(seed)`` and used at every step."""
  seed: int | None = None

  @property
  def name(self) -> str:
    return "pcgrad"

  def weights(self, m):
    t = m.shape[0]
    order = None if self.seed is None else balancing.random_order(jax.random.PRNGKey(self.seed), t)
    return balancing.pcgrad_weights(m, order)


@dataclasses.dataclass(frozen=True)
class IMTLG(Balanced):
  """IMTL-G: equal projection of D on every unit task gradient."""

  @property
  def name(self) -> str:
    return "imtl_g"

  def weights(self, m):
    return balancing.imtl_g_weights(m)


@dataclasses.dataclass(frozen=True)
class CAGrad(Balanced):
  """CAGrad with radius ``c`` (≥ 0; LibMTL's default 0.5) and ``iterations`` MM steps."""
  c: float = 0.5
  iterations: int = 20

  def __post_init__(self):
    balancing.check_at_least("CAGrad", "c", self.c, 0)
    balancing.check_at_least("CAGrad", "iterations", self.iterations, 1)

  @property
  def name(self) -> str:
    return "cagrad"

  def weights(self, m):
    return balancing.cagrad_weights(m, self.c, self.iterations)


@dataclasses.dataclass(frozen=True)
class NashMTL(Balanced):
  """Nash-MTL with relative ridge ``ridge`` (≥ 0) and ``iterations`` damped-Newton steps."""
  ridge: float = 1e-4
  iterations: int = 40

  def __post_init__(self):
    balancing.check_at_least("Nash-MTL", "ridge", self.ridge, 0)
    balancing.check_at_least("Nash-MTL", "iterations", self.iterations, 1)

  @property
  def name(self) -> str:
    return "nash_mtl"

  def weights(self, m):
    return balancing.nash_mtl_weights(m, self.ridge, self.iterations)


@dataclasses.dataclass(frozen=True)
class UPGrad(Balanced):
  """UPGrad: the mean of the task gradients, each projected onto the dual cone of all of them."""

  @property
  def name(self) -> str:
    return "upgrad"

  def weights(self, m):
    return balancing.upgrad_weights(m)


@dataclasses.dataclass(frozen=True)
class AlignedMTL(Balanced):
  """Aligned-MTL: the mean of the task gradients made orthogonal and of equal norm."""

  @property
  def name(self) -> str:
    return "aligned_mtl"

  def weights(self, m):
    return balancing.aligned_mtl_weights(m)


DIRECTIONS = {"mgda": MGDA, "pcgrad": PCGrad, "imtl_g": IMTLG, "cagrad": CAGrad,
              "nash_mtl": NashMTL, "upgrad": UPGrad, "aligned_mtl": AlignedMTL}
for _name, _cls in DIRECTIONS.items():
  base.register(_name, _cls)
