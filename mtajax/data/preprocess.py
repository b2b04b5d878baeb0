"""The reference input encoding and per-example transforms (spec §2, §7).

Examples reach these functions as decoded dicts of NumPy arrays at dataset resolution: 'image'
(H, W, 3) uint8 RGB, dense labels (H, W[, 3]) and {0, 1} masks `<task>_mask` (H, W). Geometric
transforms follow the reference loaders: test time resizes to the crop size (image bilinear,
labels nearest); train time scales by s ~ U[0.5, 1.5), flips with p = 0.5 and pads/crops to the
crop size with labels padded with 255 (ignore), masks and the raw image with 0.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mtajax.data import resize

BGR_MEAN = np.array([104.00698793, 116.66876762, 122.67891434], dtype=np.float32)
LABEL_PAD = 255.0


def input_bounds() -> tuple[np.ndarray, np.ndarray]:
  """Per-channel (low, high) of the model input box, each (3,) in BGR order."""
  return -BGR_MEAN, 255.0 - BGR_MEAN


def encode_image(rgb: np.ndarray) -> np.ndarray:
  """RGB 0..255 (H, W, 3) -> model input: BGR, float32, minus `BGR_MEAN`."""
  if rgb.shape[-1] != 3:
    raise ValueError(f'Expected an RGB image (..., 3), got shape {rgb.shape}.')
  return rgb[..., ::-1].astype(np.float32) - BGR_MEAN


def decode_image(x: np.ndarray) -> np.ndarray:
  """Inverse of `encode_image` (float RGB 0..255), e.g. to display attacked inputs."""
  return (x + BGR_MEAN)[..., ::-1]


def normal_to_reference_nyu(normal: np.ndarray) -> np.ndarray:
  """Unit normals (x, y, z) in [-1, 1] -> the reference NYUv2 encoding (Q26).

  The reference reads the normal PNG with OpenCV and never remaps it: raw uint8 values in BGR
  order (z, y, x), as float32; a channel equal to 255 marks an invalid pixel.
  """
  return np.rint((normal[..., ::-1] + 1.0) * 127.5).astype(np.float32)


def _is_label(key: str) -> bool:
  return key != 'image' and not key.endswith('_mask')


def _pad_value(key: str, pad_depth_with_zero: bool) -> float:
  if key == 'image' or key.endswith('_mask'):
    return 0.0
  if key == 'depth_zbuffer' and pad_depth_with_zero:
    return 0.0
  return LABEL_PAD


def resize_example(example: Mapping[str, np.ndarray], size: tuple[int, int]
                   ) -> dict[str, np.ndarray]:
  """Image bilinear (OpenCV rule, uint8 stays uint8), labels and masks nearest."""
  out = {}
  for key, value in example.items():
    if value.shape[:2] == tuple(size):
      out[key] = value
    elif key == 'image':
      out[key] = resize.resize_bilinear(value, size)
    else:
      out[key] = resize.resize_nearest(value, size)
  return out


def flip_example(example: Mapping[str, np.ndarray], normal_x_channel: int | None,
                 normal_negate: str) -> dict[str, np.ndarray]:
  """Horizontal flip of every map; optionally negates the x component of valid normals.

  Args:
    example: the maps.
    normal_x_channel: channel of the normal's x component, or None to leave normals as they are
      (the reference NYUv2 loader, Q26).
    normal_negate: 'unit' (x -> -x) or 'uint8' (v -> 255 - v, the raw 8-bit encoding).
  """
  out = {k: v[:, ::-1].copy() for k, v in example.items()}
  if normal_x_channel is not None and 'normal' in out:
    n = out['normal']
    valid = n.max(-1) < LABEL_PAD
    if 'normal_mask' in out:
      valid &= out['normal_mask'] > 0
    x = n[..., normal_x_channel]
    x[valid] = (255.0 - x[valid]) if normal_negate == 'uint8' else -x[valid]
  return out


def pad_and_crop(example: Mapping[str, np.ndarray], crop: tuple[int, int],
                 rng: np.random.Generator, pad_depth_with_zero: bool) -> dict[str, np.ndarray]:
  """Centred padding up to the crop size, then a random crop (reference pad-and-crop)."""
  h, w = next(iter(example.values())).shape[:2]
  ph, pw = max(h, crop[0]), max(w, crop[1])
  top, left = (ph - h) // 2, (pw - w) // 2
  y0 = int(rng.integers(0, ph - crop[0] + 1))
  x0 = int(rng.integers(0, pw - crop[1] + 1))
  out = {}
  for key, value in example.items():
    padded = np.full((ph, pw) + value.shape[2:], _pad_value(key, pad_depth_with_zero),
                     dtype=np.float32 if _is_label(key) else value.dtype)
    padded[top:top + h, left:left + w] = value
    out[key] = padded[y0:y0 + crop[0], x0:x0 + crop[1]]
  return out


def train_transform(example: Mapping[str, np.ndarray], crop: tuple[int, int],
                    rng: np.random.Generator, *, normal_x_channel: int | None,
                    normal_negate: str = 'unit', pad_depth_with_zero: bool = False,
                    scale_range: tuple[float, float] = (0.5, 1.5)) -> dict[str, np.ndarray]:
  """Reference train augmentation: random scale, flip (p = 0.5), pad-and-crop."""
  h, w = next(iter(example.values())).shape[:2]
  s = rng.uniform(*scale_range)
  out = resize_example(example, (max(1, int(h * s)), max(1, int(w * s))))
  if rng.uniform() > 0.5:
    out = flip_example(out, normal_x_channel, normal_negate)
  return pad_and_crop(out, crop, rng, pad_depth_with_zero)


def test_transform(example: Mapping[str, np.ndarray], crop: tuple[int, int]
                   ) -> dict[str, np.ndarray]:
  """Reference test transform: resize everything to the crop size (aspect not kept, Q27)."""
  return resize_example(example, crop)


def blank_like(example: Mapping[str, np.ndarray], pad_depth_with_zero: bool
               ) -> dict[str, np.ndarray]:
  """A padding example shaped like the batch-ready `example`: black image, labels as padded.

  Every label carries the value the crop padding gives it (255, or 0 for NYUv2 depth) and every
  mask is 0, so the example has no valid pixel for any task.
  """
  out = {k: np.full_like(v, _pad_value(k, pad_depth_with_zero)) for k, v in example.items()}
  out['image'] = np.broadcast_to(encode_image(np.zeros((1, 1, 3), np.uint8)),
                                 example['image'].shape).astype(example['image'].dtype)
  return out
