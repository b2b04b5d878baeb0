"""Deeplab-ResNet34 backbone (dilated, output stride 8) as 17 fine blocks (spec §8.4)."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
from flax import nnx

from mtajax.models.branched import BlockFactory
from mtajax.models.layers import BatchNorm, conv, max_pool_ceil

RESNET34_COARSE_TO_FINE = ((0,), (1, 2, 3), (4, 5, 6, 7), tuple(range(8, 14)), (14, 15, 16))
RESNET34_FEATURES = 512


class Stem(nnx.Module):
  """conv k×k/stride (3→out) + BN + ReLU, optionally + max-pool 3×3/2 pad 1 ceil-mode."""

  def __init__(self, out_ch: int, *, kernel: int, stride: int, pool: bool, rngs: nnx.Rngs):
    self.conv = conv(3, out_ch, kernel, stride=stride, padding=kernel // 2, rngs=rngs)
    self.bn = BatchNorm(out_ch, rngs=rngs)
    self.pool = pool

  def __call__(self, x: jax.Array) -> jax.Array:
    x = jax.nn.relu(self.bn(self.conv(x)))
    return max_pool_ceil(x) if self.pool else x


class BasicBlock(nnx.Module):
  """``ReLU(shortcut(x) + BN(conv3×3_d(ReLU(BN(conv3×3_{s,d}(x))))))``; 3×3 convs pad = dilation.

  The shortcut is ``BN(conv1×1/s)`` if ``projection``, else the identity.
  """

  def __init__(self, in_ch: int, out_ch: int, *, stride: int = 1, dilation: int = 1,
               projection: bool = False, rngs: nnx.Rngs):
    d = dilation
    self.conv1 = conv(in_ch, out_ch, 3, stride=stride, padding=d, dilation=d, rngs=rngs)
    self.bn1 = BatchNorm(out_ch, rngs=rngs)
    self.conv2 = conv(out_ch, out_ch, 3, padding=d, dilation=d, rngs=rngs)
    self.bn2 = BatchNorm(out_ch, rngs=rngs)
    if projection:
      self.down_conv = conv(in_ch, out_ch, 1, stride=stride, rngs=rngs)
      self.down_bn = BatchNorm(out_ch, rngs=rngs)
    else:
      self.down_conv = self.down_bn = None

  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.bn2(self.conv2(jax.nn.relu(self.bn1(self.conv1(x)))))
    shortcut = x if self.down_conv is None else self.down_bn(self.down_conv(x))
    return jax.nn.relu(shortcut + y)


def resnet_stage_blocks(in_ch: int, widths: Sequence[int], depths: Sequence[int],
                        strides: Sequence[int], dilations: Sequence[int]) -> list[BlockFactory]:
  """One factory per BasicBlock.

  The first block of each stage applies the stage's stride and width change; it gets a projection
  shortcut when its stride is not 1, its width changes or the dilation is 2 or 4 (the reference's
  rule); the other blocks have identity shortcuts.
  """
  factories = []
  for width, depth, stride, dilation in zip(widths, depths, strides, dilations, strict=True):
    projection = stride != 1 or in_ch != width or dilation in (2, 4)
    factories.append(functools.partial(BasicBlock, in_ch, width, stride=stride, dilation=dilation,
                                       projection=projection))
    factories += [functools.partial(BasicBlock, width, width, dilation=dilation)] * (depth - 1)
    in_ch = width
  return factories


def deeplab_resnet34_blocks() -> list[BlockFactory]:
  """The 17 fine blocks: stem (conv7×7/2 + pool, OS 4) then layers [3, 4, 6, 3] (OS 8, dilated)."""
  stem = functools.partial(Stem, 64, kernel=7, stride=2, pool=True)
  return [stem] + resnet_stage_blocks(64, (64, 128, 256, 512), (3, 4, 6, 3), (1, 2, 1, 1),
                                      (1, 1, 2, 4))
