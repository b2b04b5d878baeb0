"""A small CPU-friendly dilated ResNet with the Deeplab-ResNet34 block structure (output stride 4).

Stem conv3×3/2 (3→w), then stages of BasicBlocks with widths (w, 2w, 4w, 4w), depths (1, 2, 2, 1),
strides (1, 2, 1, 1) and dilations (1, 1, 2, 4): 7 fine blocks in 5 coarse blocks, so every TreeMTL
layout applies. Heads are :class:`~mtajax.models.heads.ConvHead` with ``2w`` hidden channels.
"""

from __future__ import annotations

import functools

from mtajax.models.branched import BlockFactory
from mtajax.models.resnet import Stem, resnet_stage_blocks

SMALL_COARSE_TO_FINE = ((0,), (1,), (2, 3), (4, 5), (6,))
SMALL_DEFAULT_WIDTH = 16


def small_features(width: int) -> int:
  """Channels of the small backbone's output."""
  return 4 * width


def small_resnet_blocks(width: int = SMALL_DEFAULT_WIDTH) -> list[BlockFactory]:
  """The 7 fine blocks of the small ResNet of base width ``width``."""
  if width < 1:
    raise ValueError(f"width must be a positive channel count, got {width}.")
  stem = functools.partial(Stem, width, kernel=3, stride=2, pool=False)
  return [stem] + resnet_stage_blocks(width, (width, 2 * width, 4 * width, 4 * width),
                                      (1, 2, 2, 1), (1, 2, 1, 1), (1, 1, 2, 4))
