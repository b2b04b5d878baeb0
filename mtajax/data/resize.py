"""Image resizing with the exact index rules of the reference code.

Two rules occur in the reference (spec §2, §7):
  * "nearest" (PyTorch `F.interpolate` default, OpenCV `INTER_NEAREST`): destination
    index `i` reads source index `min(floor(i * in / out), in - 1)`;
  * OpenCV `INTER_LINEAR` (bilinear with half-pixel centres, clamped at the border);
    on uint8 images OpenCV works in 11-bit fixed point, reproduced here bit-exactly.
"""
from __future__ import annotations

import functools

import numpy as np

_COEF_BITS = 11
_COEF_SCALE = 1 << _COEF_BITS


def _read_only(*arrays: np.ndarray) -> None:
  for a in arrays:
    a.setflags(write=False)


@functools.lru_cache(maxsize=4096)  # The training augmentation resizes to a few hundred sizes.
def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
  """Source index read by each destination index under the reference "nearest" rule (read-only,
  computed once per size pair)."""
  if in_size < 1 or out_size < 1:
    raise ValueError(f"sizes must be positive, got in_size={in_size}, out_size={out_size}; resize "
                     "a non-empty array to a non-empty size.")
  idx = np.minimum((np.arange(out_size, dtype=np.int64) * in_size) // out_size, in_size - 1)
  _read_only(idx)
  return idx


def resize_nearest(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Resizes the two leading axes (H, W, ...) of `x` with the reference nearest rule."""
  h, w = size
  rows = nearest_indices(x.shape[0], h)
  cols = nearest_indices(x.shape[1], w)
  return x[rows][:, cols]


@functools.lru_cache(maxsize=4096)
def _linear_taps(in_size: int, out_size: int, clamp_weights: bool, src_dtype: type
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """OpenCV INTER_LINEAR source indices (i0, i1) and weight of i1 per destination index
  (read-only, computed once per size pair).

  OpenCV zeroes the weight of out-of-range taps (`clamp_weights`) except for the rows of its
  uint8 fixed-point path, where it only clamps the row indices; the two round differently there.
  Source positions are computed in float32 on that path (`src_dtype`), in float64 otherwise.
  """
  scale = 1.0 / (out_size / in_size)
  src = ((np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5).astype(src_dtype)
  i0 = np.floor(src).astype(np.int64)
  frac = (src - i0).astype(np.float32)
  if clamp_weights:
    frac[(i0 < 0) | (i0 >= in_size - 1)] = 0.0
  taps = np.clip(i0, 0, in_size - 1), np.clip(i0 + 1, 0, in_size - 1), frac
  _read_only(*taps)
  return taps


def resize_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Resizes (H, W[, C]) like `cv2.resize(x, (w, h))` with INTER_LINEAR.

  uint8 input returns uint8 using OpenCV's fixed-point arithmetic (11-bit weights, horizontal
  pass then vertical pass with the rounding of its vectorised kernel); float input returns float32.
  """
  h, w = size
  fixed_point = x.dtype == np.uint8
  src_dtype = np.float32 if fixed_point else np.float64
  r0, r1, fy = _linear_taps(x.shape[0], h, not fixed_point, src_dtype)
  c0, c1, fx = _linear_taps(x.shape[1], w, True, src_dtype)
  extra = (1,) * (x.ndim - 2)
  if fixed_point:
    ax0, ax1 = (np.rint(f * _COEF_SCALE).astype(np.int32) for f in (1 - fx, fx))
    ay0, ay1 = (np.rint(f * _COEF_SCALE).astype(np.int32) for f in (1 - fy, fy))
    xi = x.astype(np.int32)
    rows = np.stack([xi[r0], xi[r1]])  # (2, h, W, ...)
    horiz = (rows[:, :, c0] * ax0.reshape((1, 1, w) + extra)
             + rows[:, :, c1] * ax1.reshape((1, 1, w) + extra))  # (2, h, w, ...) scaled by 2^11
    b0 = ay0.reshape((h, 1) + extra)
    b1 = ay1.reshape((h, 1) + extra)
    top = ((horiz[0] >> 4) * b0) >> 16
    bottom = ((horiz[1] >> 4) * b1) >> 16
    return np.clip((top + bottom + 2) >> 2, 0, 255).astype(np.uint8)
  xf = x.astype(np.float32)
  top = xf[r0] * (1 - fy).reshape((h, 1) + extra) + xf[r1] * fy.reshape((h, 1) + extra)
  fxr = fx.reshape((1, w) + extra)
  return (top[:, c0] * (1 - fxr) + top[:, c1] * fxr).astype(np.float32)
