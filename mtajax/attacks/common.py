"""Shared pieces of the L∞ attacks: the threat model, input checks and the result type."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mtajax import platform

Array = jax.Array
Bounds = tuple[Any, Any]


class AttackResult(NamedTuple):
  """What every attack returns.

  Attributes:
    x_adv: the adversarial batch, same shape as the input.
    objective: (steps, B) per-sample objective of the direction at each evaluated iterate
      (its batch mean is the reference's objective F).
    losses: ``{task: (steps, B)}`` per-sample task losses at the same iterates.
  """
  x_adv: Array
  objective: Array
  losses: dict[str, Array]


def detached(losses: dict[str, Array]) -> dict[str, Array]:
  """Per-task losses as constants (used as the default GB-MTA objective baselines)."""
  return {t: jax.lax.stop_gradient(v) for t, v in losses.items()}


def objective_trace(direction, losses: dict[str, Array], baselines) -> Array:
  """(steps, B) objective from stacked (steps, B) losses; baselines default to the first step's."""
  if baselines is None:
    baselines = {t: v[0] for t, v in losses.items()}
  return direction.objective(losses, baselines)


def project(x: Array, x0: Array, eps: Array) -> Array:
  """L∞ projection onto the ε-ball around ``x0`` (reference ``proj``).

  The ball's ends are nudged by one ulp where float rounding would put them beyond ε, so the
  computed ``|x − x0|`` never exceeds ε (the reference's plain clamp can exceed it by half an ulp of
  ``x0``, ~1e-5 on the 0–255 scale).
  """
  high = x0 + eps
  high = jnp.where(high - x0 > eps, jnp.nextafter(high, x0), high)
  low = x0 - eps
  low = jnp.where(x0 - low > eps, jnp.nextafter(low, x0), low)
  return jnp.clip(x, low, high)


def clip(x: Array, bounds: Bounds) -> Array:
  """Per-channel clamp to the valid input box (channels last)."""
  low, high = bounds
  return jnp.clip(x, jnp.asarray(low, x.dtype), jnp.asarray(high, x.dtype))


def step(x: Array, x0: Array, direction: Array, step_size: Array, eps: Array,
         bounds: Bounds) -> Array:
  """One signed step followed by projection and clamping: clip(proj(x + a·sign(D))).

  Elements where D is NaN (a loss with a NaN gradient) do not move; the NaN stays visible in the
  attack's loss diagnostics instead of spreading into the adversarial batch.
  """
  return clip(project(x + step_size * safe_sign(direction), x0, eps), bounds)


def safe_sign(d: Array) -> Array:
  """sign(d) with sign(0) = 0 and sign(NaN) = 0."""
  return jnp.sign(jnp.where(jnp.isnan(d), 0.0, d))


def per_sample(mask: Array, x: Array) -> Array:
  """Broadcasts a (B,) vector against a (B, ...) array."""
  return mask.reshape(mask.shape + (1,) * (x.ndim - 1))


def random_start(key: Array, x0: Array, eps: Array, bounds: Bounds) -> Array:
  """Uniform start in the ε-ball, clamped to the box."""
  noise = jax.random.uniform(key, x0.shape, x0.dtype, -1.0, 1.0)
  return clip(x0 + eps * noise, bounds)


def resolve_unroll(unroll: bool | int | None) -> bool | int:
  """``None`` picks the measured per-platform default (see :func:`mtajax.platform.default_unroll`)."""
  return platform.default_unroll() if unroll is None else unroll


def _is_concrete(v: Any) -> bool:
  return not isinstance(v, jax.core.Tracer)


def check_inputs(x: Array, eps: Any, bounds: Bounds, *, step_size: Any = None,
                 random_start_: bool = False, key: Array | None = None) -> None:
  """Validates attack inputs; raises a one-line ValueError naming the problem and the fix.

  Value checks (finite input inside the box, ε ≥ 0) run only on concrete arrays; under an outer
  ``jit`` the caller is responsible for them.
  """
  if x.ndim < 2:
    raise ValueError(f"x must be a batch (B, ...); got shape {x.shape}.")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"x must be floating point; got {x.dtype}. Fix: x.astype(jnp.float32).")
  low, high = bounds
  for name, b in (("low", low), ("high", high)):
    shape = np.shape(b)
    if shape not in ((), (x.shape[-1],)):
      raise ValueError(f"bounds {name} must be a scalar or one value per channel "
                       f"({x.shape[-1]},); got shape {shape}.")
  if random_start_ and key is None:
    raise ValueError("random_start=True needs a PRNG key; pass key=jax.random.key(seed).")
  if _is_concrete(eps) and not float(np.min(eps)) >= 0:
    raise ValueError(f"eps must be >= 0; got {eps}.")
  if step_size is not None and _is_concrete(step_size) and not float(np.min(step_size)) > 0:
    raise ValueError(f"step_size must be > 0; got {step_size}.")
  if _is_concrete(x):
    if not bool(jnp.all(jnp.isfinite(x))):
      raise ValueError("x contains NaN or inf; attacks need a finite input batch. Fix: clean or "
                       "drop those samples first.")
    if _is_concrete(low) and _is_concrete(high):
      lo = jnp.asarray(low, x.dtype)
      hi = jnp.asarray(high, x.dtype)
      if bool(jnp.any(lo > hi)):
        raise ValueError(f"bounds low > high for some channel: {low} vs {high}.")
      if bool(jnp.any((x < lo - 1e-4) | (x > hi + 1e-4))):
        raise ValueError("x lies outside the input bounds; pass the bounds of the model's input "
                         "encoding (mtajax.data.preprocess.input_bounds() for the reference one).")
