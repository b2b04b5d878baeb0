"""The reference's "nearest" resize rule as a JAX gather, and the labels' resize to predictions.

The rule's indices are ``mtajax.data.resize.nearest_indices``: destination index ``i`` reads
source index ``floor(i * in_size / out_size)`` (PyTorch ``F.interpolate(mode='nearest')`` and
OpenCV ``INTER_NEAREST``; no half-pixel offset), so ``jax.image.resize(method='nearest')`` must not
be used for labels or predictions.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp

from mtajax.data import resize as data_resize


def resize_nearest(x: jax.Array, hw: tuple[int, int]) -> jax.Array:
  """Resizes axes 1 and 2 of ``x`` (B, H, W, ...) to ``hw`` with the reference nearest rule."""
  if x.ndim < 3:
    raise ValueError(f"Expected an array (B, H, W, ...), got shape {x.shape}.")
  h, w = hw
  if (x.shape[1], x.shape[2]) == (h, w):
    return x
  rows = data_resize.nearest_indices(x.shape[1], h)
  cols = data_resize.nearest_indices(x.shape[2], w)
  return jnp.take(jnp.take(x, jnp.asarray(rows), axis=1), jnp.asarray(cols), axis=2)


def is_stride_scaling(src: tuple[int, int], dst: tuple[int, int]) -> bool:
  """Whether ``dst`` is ``src`` times one integer k, or ``src`` divided by one integer stride k and
  rounded either way (a strided network's output: 321x321 at stride 8 gives 41x41)."""
  (h, w), (oh, ow) = src, dst
  if oh % h == 0 and ow % w == 0 and oh // h == ow // w:
    return True
  return any(h // k <= oh <= -(-h // k) and w // k <= ow <= -(-w // k) for k in range(1, h + 1))


def resize_labels(y: jax.Array, hw: tuple[int, int], task: str) -> jax.Array:
  """Labels (B, H, W, ...) brought to the prediction size ``hw`` by :func:`resize_nearest`, as the
  reference does; warns (once per shape pair) unless :func:`is_stride_scaling` holds."""
  src = (y.shape[1], y.shape[2])
  if src != tuple(hw) and not is_stride_scaling(src, tuple(hw)):
    warnings.warn(f"Task {task!r}: labels {src[0]}x{src[1]} resized to the prediction's "
                  f"{hw[0]}x{hw[1]} by the nearest rule, not one output stride or integer "
                  "upsampling; pass labels at the network's input size.", stacklevel=2)
  return resize_nearest(y, hw)
