"""Layers with PyTorch semantics: BatchNorm, explicit conv padding, ceil-mode pooling, inits."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx


def _normal(key, shape, dtype):
  return jax.random.normal(key, shape, dtype)


def _uniform(key, shape, dtype, low, high):
  return jax.random.uniform(key, shape, dtype, low, high)


@functools.cache
def _compiled(fn):
  options = {"xla_backend_optimization_level": 2} if jax.default_backend() == "cpu" else None
  return jax.jit(fn, static_argnums=(1, 2), compiler_options=options)


def _draw(fn, key, shape, dtype, *params):
  """``fn(key, shape, dtype, *params)``. Called eagerly, one program per shape and dtype compiled,
  on CPU, at XLA backend optimisation level 2: XLA:CPU's default (3) compiles a random draw ~2.5x
  slower to the same bits, and an eager model initialisation compiles one draw per parameter
  shape (~1 s each at level 3; test: the weights equal ``jax.random``'s). Under a trace
  (``nnx.eval_shape``, ``jax.jit``) it is drawn there."""
  if isinstance(key, jax.core.Tracer):
    return fn(key, tuple(shape), dtype, *params)
  return _compiled(fn)(key, tuple(shape), dtype, *params)


def backbone_init(key, shape, dtype=jnp.float32):
  """Backbone convs ~ N(0, 0.01) (spec §8.8): ``nnx.initializers.normal(0.01)``'s values (its
  scaling stays a separate operation: fused into the draw it rounds differently)."""
  return _draw(_normal, key, shape, dtype) * jnp.asarray(0.01, dtype)


def torch_default_init(fan_in: int) -> tuple[nnx.Initializer, nnx.Initializer]:
  """PyTorch's default Conv2d init: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return _draw(_uniform, key, shape, dtype, -bound, bound)

  return init, init


class BatchNorm(nnx.BatchNorm):
  """PyTorch ``BatchNorm2d`` (eps 1e-5, momentum 0.1, affine) over the last axis.

  Differs from :class:`flax.nnx.BatchNorm` only in training mode, where the running variance is
  updated with the unbiased batch variance ``n / (n - 1) * var`` as PyTorch does (the output still
  uses the biased one).
  """

  def __init__(self, num_features: int, *, rngs: nnx.Rngs):
    super().__init__(num_features, momentum=0.9, epsilon=1e-5, rngs=rngs)

  def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
    if use_running_average if use_running_average is not None else self.use_running_average:
      return super().__call__(x, use_running_average=True)
    axes = tuple(range(x.ndim - 1))
    n = math.prod(x.shape[:-1])
    if n < 2:
      raise ValueError(f"BatchNorm in training mode needs more than one value per channel, got "
                       f"input shape {x.shape}; use a larger batch or eval mode.")
    mean = jnp.mean(x, axes)
    var = jnp.mean(jnp.square(x - mean), axes)
    m = self.momentum
    self.mean[...] = jax.lax.stop_gradient(m * self.mean[...] + (1 - m) * mean)
    self.var[...] = jax.lax.stop_gradient(m * self.var[...] + (1 - m) * var * (n / (n - 1)))
    return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * self.scale[...] + self.bias[...]


def conv(in_ch: int, out_ch: int, kernel: int, *, stride: int = 1, padding: int = 0,
         dilation: int = 1, groups: int = 1, bias: bool = False,
         kernel_init: nnx.Initializer = backbone_init, bias_init: nnx.Initializer | None = None,
         rngs: nnx.Rngs) -> nnx.Conv:
  """A 2-D convolution with PyTorch's symmetric explicit zero padding."""
  return nnx.Conv(
      in_ch, out_ch, (kernel, kernel), strides=stride, padding=((padding, padding),) * 2,
      kernel_dilation=dilation, feature_group_count=groups, use_bias=bias, kernel_init=kernel_init,
      bias_init=bias_init if bias_init is not None else nnx.initializers.zeros, rngs=rngs)


def torch_conv(in_ch: int, out_ch: int, kernel: int, *, padding: int = 0, dilation: int = 1,
               rngs: nnx.Rngs) -> nnx.Conv:
  """A biased convolution with PyTorch's default initialisation (used by the heads)."""
  kernel_init, bias_init = torch_default_init(in_ch * kernel * kernel)
  return conv(in_ch, out_ch, kernel, padding=padding, dilation=dilation, bias=True,
              kernel_init=kernel_init, bias_init=bias_init, rngs=rngs)


def ceil_pool_size(size: int, kernel: int, stride: int, padding: int) -> int:
  """PyTorch ``MaxPool2d(ceil_mode=True)`` output size."""
  out = -(-(size + 2 * padding - kernel) // stride) + 1
  if (out - 1) * stride >= size + padding:
    out -= 1
  return out


def max_pool_ceil(x: jax.Array, kernel: int = 3, stride: int = 2, padding: int = 1) -> jax.Array:
  """PyTorch ``MaxPool2d(kernel, stride, padding, ceil_mode=True)`` on NHWC input."""
  pads = [(0, 0)]
  for size in x.shape[1:3]:
    out = ceil_pool_size(size, kernel, stride, padding)
    pads.append((padding, (out - 1) * stride + kernel - size - padding))
  pads.append((0, 0))
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, kernel, kernel, 1),
                               (1, stride, stride, 1), pads)
