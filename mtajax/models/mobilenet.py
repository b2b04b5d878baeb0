"""MobileNetV2 backbone (ReLU, output stride 32) as TreeMTL's 32 fine blocks (spec §8.6).

TreeMTL splits the prototxt graph wherever one edge separates it: the first unit of every stage
(no residual) becomes up to three blocks (expand, depthwise, project), a residual unit stays whole.
"""

from __future__ import annotations

import functools

import jax
from flax import nnx

from mtajax.models.branched import BlockFactory
from mtajax.models.layers import BatchNorm, conv

MOBILENETV2_COARSE_TO_FINE = (tuple(range(0, 7)), tuple(range(7, 18)), tuple(range(18, 23)),
                              tuple(range(23, 31)), (31,))
MOBILENETV2_FEATURES = 1280

# Inverted-residual stages (expansion t, channels c, units n, stride s) of MobileNetV2.
_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
           (6, 160, 3, 2), (6, 320, 1, 1))


class ConvBN(nnx.Module):
  """conv k×k (pad k//2) + BN, then ReLU unless ``relu=False``; depthwise when ``depthwise``."""

  def __init__(self, in_ch: int, out_ch: int, *, kernel: int = 1, stride: int = 1,
               depthwise: bool = False, relu: bool = True, rngs: nnx.Rngs):
    self.conv = conv(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2,
                     groups=in_ch if depthwise else 1, rngs=rngs)
    self.bn = BatchNorm(out_ch, rngs=rngs)
    self.relu = relu

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.bn(self.conv(x))
    return jax.nn.relu(x) if self.relu else x


class InvertedResidual(nnx.Module):
  """``x + project(dw(expand(x)))`` for stride-1 units of unchanged width."""

  def __init__(self, ch: int, hidden: int, *, rngs: nnx.Rngs):
    self.expand = ConvBN(ch, hidden, rngs=rngs)
    self.dw = ConvBN(hidden, hidden, kernel=3, depthwise=True, rngs=rngs)
    self.project = ConvBN(hidden, ch, relu=False, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return x + self.project(self.dw(self.expand(x)))


def mobilenetv2_blocks() -> list[BlockFactory]:
  """The 32 fine blocks; 2,223,872 parameters (BN scale and bias counted)."""
  blocks = [functools.partial(ConvBN, 3, 32, kernel=3, stride=2)]
  in_ch = 32
  for t, c, n, s in _STAGES:
    hidden = in_ch * t
    if t != 1:
      blocks.append(functools.partial(ConvBN, in_ch, hidden))
    blocks.append(functools.partial(ConvBN, hidden, hidden, kernel=3, stride=s, depthwise=True))
    blocks.append(functools.partial(ConvBN, hidden, c, relu=False))
    blocks += [functools.partial(InvertedResidual, c, c * t)] * (n - 1)
    in_ch = c
  blocks.append(functools.partial(ConvBN, in_ch, MOBILENETV2_FEATURES))
  return blocks
