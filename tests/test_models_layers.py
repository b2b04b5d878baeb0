"""Backbone layers against NumPy/PyTorch semantics: ceil pooling, convolutions, batch norm, init."""

import math
import os
import subprocess
import sys

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mtajax  # noqa: F401  (XLA:CPU workaround before JAX initialises)
from mtajax.models import layers


def _np_maxpool_ceil(x, k=3, s=2, p=1):
  """PyTorch MaxPool2d(ceil_mode=True) on (H, W): windows start at -p; last start < H + p."""
  h, w = x.shape
  out = [layers.ceil_pool_size(n, k, s, p) for n in (h, w)]
  y = np.empty(out)
  for i in range(out[0]):
    for j in range(out[1]):
      r0, c0 = i * s - p, j * s - p
      y[i, j] = x[max(r0, 0):min(r0 + k, h), max(c0, 0):min(c0 + k, w)].max()
  return y


def test_ceil_pool_sizes():
  # reference-spec §8.4/§13 and PyTorch's formula.
  assert layers.ceil_pool_size(161, 3, 2, 1) == 81
  assert layers.ceil_pool_size(112, 3, 2, 1) == 57
  for n in range(2, 40):
    out = math.ceil((n + 2 - 3) / 2) + 1
    if (out - 1) * 2 >= n + 1:
      out -= 1
    assert layers.ceil_pool_size(n, 3, 2, 1) == out


@pytest.mark.parametrize("h,w", [(7, 8), (12, 5), (9, 9)])
def test_max_pool_ceil_matches_numpy(h, w):
  x = np.random.default_rng(0).normal(size=(2, h, w, 3)).astype(np.float32)
  y = np.asarray(layers.max_pool_ceil(jnp.asarray(x)))
  for b in range(2):
    for c in range(3):
      np.testing.assert_array_equal(y[b, :, :, c], _np_maxpool_ceil(x[b, :, :, c]))


def _np_conv(x, w, stride, pad, dil):
  """Direct NHWC x HWIO convolution with symmetric zero padding (PyTorch Conv2d semantics)."""
  x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  k = w.shape[0]
  span = (k - 1) * dil + 1
  out_h = (x.shape[1] - span) // stride + 1
  out_w = (x.shape[2] - span) // stride + 1
  y = np.zeros((x.shape[0], out_h, out_w, w.shape[3]))
  for i in range(out_h):
    for j in range(out_w):
      patch = x[:, i * stride:i * stride + span:dil, j * stride:j * stride + span:dil, :]
      y[:, i, j] = np.einsum("bhwc,hwco->bo", patch, w)
  return y


@pytest.mark.parametrize("kernel,stride,pad,dil", [(3, 2, 1, 1), (3, 1, 2, 2), (7, 2, 3, 1),
                                                   (1, 2, 0, 1)])
def test_conv_padding_matches_numpy(kernel, stride, pad, dil):
  conv = layers.conv(3, 4, kernel, stride=stride, padding=pad, dilation=dil, rngs=nnx.Rngs(0))
  x = np.random.default_rng(1).normal(size=(1, 11, 10, 3)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(conv(jnp.asarray(x))),
                             _np_conv(x, np.asarray(conv.kernel[...]), stride, pad, dil),
                             rtol=1e-4, atol=1e-5)
  assert conv.bias is None and float(np.std(conv.kernel[...])) == pytest.approx(0.01, rel=0.3)


def test_batchnorm_train_and_eval_match_pytorch_semantics():
  bn = layers.BatchNorm(3, rngs=nnx.Rngs(0))
  x = np.random.default_rng(2).normal(2.0, 3.0, size=(2, 4, 5, 3)).astype(np.float32)
  y = np.asarray(bn(jnp.asarray(x)))
  flat = x.reshape(-1, 3).astype(np.float64)
  mean, var = flat.mean(0), flat.var(0)
  np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-4)
  # PyTorch: running = 0.9 running + 0.1 batch, with the unbiased variance.
  np.testing.assert_allclose(bn.mean[...], 0.1 * mean, rtol=1e-5)
  np.testing.assert_allclose(bn.var[...], 0.9 + 0.1 * flat.var(0, ddof=1), rtol=1e-5)
  ev = nnx.view(bn, use_running_average=True)
  np.testing.assert_allclose(
      np.asarray(ev(jnp.asarray(x))),
      (x - 0.1 * mean) / np.sqrt(0.9 + 0.1 * flat.var(0, ddof=1) + 1e-5), rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="more than one value"):
    bn(jnp.ones((1, 1, 1, 3)))


_SAME_BITS = """
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
import mtajax
from mtajax.models import layers
for shape in [(3, 3, 3, 8), (1, 1, 8, 16), (16,)]:
  key = jax.random.key(3)
  np.testing.assert_array_equal(layers.backbone_init(key, shape),
                                nnx.initializers.normal(stddev=0.01)(key, shape))
  weight_init, bias_init = layers.torch_default_init(36)
  want = jax.random.uniform(key, shape, jnp.float32, -1 / 6, 1 / 6)
  np.testing.assert_array_equal(weight_init(key, shape), want)
  np.testing.assert_array_equal(bias_init(key, shape), want)
  assert float(jnp.std(want)) > 0
print("same bits")
"""


def test_initialisers_draw_the_values_of_jax_random():
  # layers compiles its draws at another XLA optimisation level: the bits must not change. Run at
  # XLA:CPU's default level, as users run it (the suite's processes run at level 0: conftest.py).
  flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                   if "xla_backend_optimization_level" not in f)
  done = subprocess.run([sys.executable, "-c", _SAME_BITS], env={**os.environ, "XLA_FLAGS": flags},
                        capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 0 and "same bits" in done.stdout, done.stderr[-3000:]
