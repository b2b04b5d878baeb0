"""Threat models: the ε-ball an attack stays in, its steepest-ascent step and its random starts.

A threat model is a small frozen object with four pure methods; the attacks combine it with the
per-channel input box (``common.clip``). ε is a scalar or one value per image (B,), always traced.

==========  =====================================  ===========================  ===================
``norm``    projection onto the ε-ball             unit step direction          ``uniform`` start
==========  =====================================  ===========================  ===================
``'linf'``  clamp to [x0 − ε, x0 + ε]               sign(D)                      uniform in the cube
``'l2'``    x0 + δ·min(1, ε/‖δ‖₂) per image         D / ‖D‖₂ per image           uniform in the ball
==========  =====================================  ===========================  ===================

Both keep the box after the ball: clamping into a box that contains x0 never lengthens δ, so
``clip(project(x))`` lies in the ball ∩ box (AutoAttack's order). ``autoattack_start`` is
fra31/auto-attack's APGD start: Linf x0 + ε·t/max|t| with t ~ U(−1, 1), L2 x0 + ε·n/‖n‖₂ with
n ~ N(0, 1), per image.
"""

from __future__ import annotations

import abc
import dataclasses

import jax
import jax.numpy as jnp

from mtajax.directions.base import per_sample

Array = jax.Array


def _no_nan(d: Array) -> Array:
  return jnp.where(jnp.isnan(d), 0.0, d)


def _image_l2(v: Array) -> Array:
  """(B, 1, ..., 1) L2 norm of each image of ``v``."""
  return jnp.sqrt(jnp.sum(v * v, axis=tuple(range(1, v.ndim)), keepdims=True))


@dataclasses.dataclass(frozen=True)
class ThreatModel(abc.ABC):
  """An ε-ball: projection, unit ascent step and random starts."""

  name = ""

  @abc.abstractmethod
  def project(self, x: Array, x0: Array, eps: Array) -> Array:
    """The point of the ε-ball around ``x0`` nearest to ``x`` (ε scalar or (B,))."""

  @abc.abstractmethod
  def unit(self, d: Array) -> Array:
    """Steepest ascent step of unit size along ``d``; NaN elements of ``d`` count as 0."""

  @abc.abstractmethod
  def distance(self, x: Array, x0: Array) -> Array:
    """(B,) size of the perturbation ``x − x0`` in this norm."""

  @abc.abstractmethod
  def uniform_start(self, key: Array, x0: Array, eps: Array) -> Array:
    """A point drawn uniformly from the ε-ball around ``x0``."""

  @abc.abstractmethod
  def autoattack_start(self, key: Array, x0: Array, eps: Array) -> Array:
    """fra31/auto-attack's APGD start (on the ball's boundary)."""


@dataclasses.dataclass(frozen=True)
class Linf(ThreatModel):
  """L∞ ball (the paper's and the reference's threat model)."""

  name = "linf"

  def project(self, x, x0, eps):
    """Clamp to [x0 − ε, x0 + ε], the ends nudged by one ulp so the computed |x − x0| ≤ ε.

    (The reference's plain clamp can exceed ε by half an ulp of x0, ~1e-5 on the 0–255 scale.)
    """
    eps = per_sample(eps, x0)
    high = x0 + eps
    high = jnp.where(high - x0 > eps, jnp.nextafter(high, x0), high)
    low = x0 - eps
    low = jnp.where(x0 - low > eps, jnp.nextafter(low, x0), low)
    return jnp.clip(x, low, high)

  def unit(self, d):
    return jnp.sign(_no_nan(d))

  def distance(self, x, x0):
    return jnp.max(jnp.abs(x - x0), axis=tuple(range(1, x.ndim)))

  def uniform_start(self, key, x0, eps):
    return x0 + per_sample(eps, x0) * jax.random.uniform(key, x0.shape, x0.dtype, -1.0, 1.0)

  def autoattack_start(self, key, x0, eps):
    t = jax.random.uniform(key, x0.shape, x0.dtype, -1.0, 1.0)
    t_max = jnp.max(jnp.abs(t), axis=tuple(range(1, t.ndim)), keepdims=True)
    return x0 + per_sample(eps, x0) * t / (t_max + 1e-12)


@dataclasses.dataclass(frozen=True)
class L2(ThreatModel):
  """L2 ball, ε per image (AutoAttack's L2 APGD rules)."""

  name = "l2"

  def project(self, x, x0, eps):
    delta = x - x0
    norm = _image_l2(delta)
    eps = per_sample(eps, x0)
    scale = jnp.where(norm > eps, eps / jnp.where(norm > 0, norm, 1.0), 1.0)
    return x0 + delta * scale

  def unit(self, d):
    d = _no_nan(d)
    norm = _image_l2(d)
    return jnp.where(norm > 0, d / jnp.where(norm > 0, norm, 1.0), 0.0)

  def distance(self, x, x0):
    return _image_l2(x - x0).reshape(x.shape[:1])

  def uniform_start(self, key, x0, eps):
    k_dir, k_radius = jax.random.split(key)
    n = jax.random.normal(k_dir, x0.shape, x0.dtype)
    dim = x0[0].size
    radius = jax.random.uniform(k_radius, x0.shape[:1], x0.dtype) ** (1.0 / dim)
    return x0 + per_sample(eps * radius, x0) * n / (_image_l2(n) + 1e-12)

  def autoattack_start(self, key, x0, eps):
    n = jax.random.normal(key, x0.shape, x0.dtype)
    return x0 + per_sample(eps, x0) * n / (_image_l2(n) + 1e-12)


NORMS = {"linf": Linf(), "l2": L2()}


def by_name(norm: str) -> ThreatModel:
  """The threat model called ``norm`` ('linf' or 'l2')."""
  if norm not in NORMS:
    raise ValueError(f"unknown norm {norm!r}; use one of {', '.join(NORMS)} "
                     "(e.g. norm='l2' with eps the L2 radius per image).")
  return NORMS[norm]
