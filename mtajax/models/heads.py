"""Per-task dense prediction heads; outputs stay at feature resolution, no final activation.

Heads are called as ``head(features, rng=key)``; ``rng`` feeds their dropout in training mode and is
ignored in eval mode (``nnx.view(..., deterministic=True)``).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx

from mtajax.models.layers import torch_conv


def _dropout_key(rng: jax.Array | None, index: int) -> jax.Array | None:
  return None if rng is None else jax.random.fold_in(rng, index)


class ASPPBranch(nnx.Module):
  """Dilated conv3×3 (in→hidden), ReLU, Dropout, conv1×1 (hidden→hidden), ReLU, Dropout, conv1×1."""

  def __init__(self, in_ch: int, out_ch: int, rate: int, *, hidden: int, dropout: float,
               rngs: nnx.Rngs):
    self.conv1 = torch_conv(in_ch, hidden, 3, padding=rate, dilation=rate, rngs=rngs)
    self.conv2 = torch_conv(hidden, hidden, 1, rngs=rngs)
    self.conv3 = torch_conv(hidden, out_ch, 1, rngs=rngs)
    self.dropout = nnx.Dropout(dropout)

  def __call__(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
    x = self.dropout(jax.nn.relu(self.conv1(x)), rngs=_dropout_key(rng, 0))
    x = self.dropout(jax.nn.relu(self.conv2(x)), rngs=_dropout_key(rng, 1))
    return self.conv3(x)


class ASPPHead(nnx.Module):
  """TreeMTL's ``ASPPHeadNode``: the sum of four dilated branches (rates 6, 12, 18, 24)."""

  def __init__(self, in_ch: int, out_ch: int, *, rates: Sequence[int] = (6, 12, 18, 24),
               hidden: int = 1024, dropout: float = 0.5, rngs: nnx.Rngs):
    self.branches = nnx.List([ASPPBranch(in_ch, out_ch, r, hidden=hidden, dropout=dropout,
                                         rngs=rngs) for r in rates])

  def __call__(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
    return sum(branch(x, _dropout_key(rng, i)) for i, branch in enumerate(self.branches))


class ConvHead(nnx.Module):
  """A small head: conv3×3 (in→hidden) → ReLU → Dropout → conv1×1 (hidden→out)."""

  def __init__(self, in_ch: int, out_ch: int, *, hidden: int, dropout: float = 0.1,
               rngs: nnx.Rngs):
    self.conv1 = torch_conv(in_ch, hidden, 3, padding=1, rngs=rngs)
    self.conv2 = torch_conv(hidden, out_ch, 1, rngs=rngs)
    self.dropout = nnx.Dropout(dropout)

  def __call__(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
    return self.conv2(self.dropout(jax.nn.relu(self.conv1(x)), rngs=_dropout_key(rng, 0)))
