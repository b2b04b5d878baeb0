"""Reference resize rules: nearest gather and OpenCV INTER_LINEAR (bit-exact on uint8)."""
import importlib

import numpy as np
import pytest

from mtajax.data import resize


def _cv2():
  """OpenCV when importable; it is not a dependency of mtajax."""
  try:
    return importlib.import_module('cv2')
  except ImportError:
    return None


SIZES = [((480, 640), (321, 321)), ((256, 256), (224, 224)), ((37, 50), (90, 71)),
         ((64, 64), (321, 321)), ((13, 7), (5, 29)), ((300, 400), (150, 601))]


def test_nearest_matches_floor_rule():
  for (h, w), (oh, ow) in SIZES:
    x = np.arange(h * w).reshape(h, w)
    out = resize.resize_nearest(x, (oh, ow))
    for i in range(oh):
      for j in (0, ow // 2, ow - 1):
        src = (min(int(np.floor(i * h / oh)), h - 1), min(int(np.floor(j * w / ow)), w - 1))
        assert out[i, j] == x[src]


def _bilinear_reference(x, size):
  """Independent float64 bilinear with half-pixel centres and clamped borders."""
  def taps(n_in, n_out):
    src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, src - i0
  r0, r1, fy = taps(x.shape[0], size[0])
  c0, c1, fx = taps(x.shape[1], size[1])
  x = x.astype(np.float64)
  rows = x[r0] * (1 - fy)[:, None, None] + x[r1] * fy[:, None, None]
  return rows[:, c0] * (1 - fx)[None, :, None] + rows[:, c1] * fx[None, :, None]


def test_bilinear_float_matches_independent_reference():
  rng = np.random.default_rng(0)
  for (h, w), size in SIZES:
    x = rng.uniform(0, 255, (h, w, 3)).astype(np.float32)
    np.testing.assert_allclose(resize.resize_bilinear(x, size), _bilinear_reference(x, size),
                               atol=2e-3)


def test_bilinear_uint8_within_one_level_and_exact_on_constants():
  rng = np.random.default_rng(1)
  for (h, w), size in SIZES:
    x = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    out = resize.resize_bilinear(x, size)
    assert out.dtype == np.uint8
    assert np.abs(out.astype(float) - _bilinear_reference(x, size)).max() <= 1.0
    const = np.full((h, w, 3), 137, np.uint8)
    assert np.all(resize.resize_bilinear(const, size) == 137)


def test_bit_exact_against_opencv():
  cv2 = _cv2()
  if cv2 is None:
    pytest.skip('OpenCV not installed (optional; install opencv-python-headless to run).')
  rng = np.random.default_rng(2)
  for (h, w), (oh, ow) in SIZES:
    x = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize.resize_bilinear(x, (oh, ow)), cv2.resize(x, (ow, oh)))
    np.testing.assert_array_equal(resize.resize_nearest(x, (oh, ow)),
                                  cv2.resize(x, (ow, oh), interpolation=cv2.INTER_NEAREST))
    xf = x.astype(np.float32) + rng.uniform(0, 1, x.shape).astype(np.float32)
    np.testing.assert_allclose(resize.resize_bilinear(xf, (oh, ow)), cv2.resize(xf, (ow, oh)),
                               atol=1e-4)
