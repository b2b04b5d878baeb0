"""The reference's "nearest" resize rule, as a gather.

Destination index ``i`` reads source index ``floor(i * in_size / out_size)`` (PyTorch
``F.interpolate(mode='nearest')`` and OpenCV ``INTER_NEAREST``; no half-pixel offset), so
``jax.image.resize(method='nearest')`` must not be used for labels or predictions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
  """Source index read by each of ``out_size`` destination positions (exact integer arithmetic)."""
  if in_size < 1 or out_size < 1:
    raise ValueError(f"Sizes must be positive, got in_size={in_size}, out_size={out_size}.")
  return (np.arange(out_size, dtype=np.int64) * in_size) // out_size


def resize_nearest(x: jax.Array, hw: tuple[int, int]) -> jax.Array:
  """Resizes axes 1 and 2 of ``x`` (B, H, W, ...) to ``hw`` with the reference nearest rule."""
  if x.ndim < 3:
    raise ValueError(f"Expected an array (B, H, W, ...), got shape {x.shape}.")
  h, w = hw
  if (x.shape[1], x.shape[2]) == (h, w):
    return x
  x = jnp.take(x, jnp.asarray(nearest_indices(x.shape[1], h)), axis=1)
  return jnp.take(x, jnp.asarray(nearest_indices(x.shape[2], w)), axis=2)
