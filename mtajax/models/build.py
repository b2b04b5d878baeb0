"""Backbone registry and :func:`build_model`: a named backbone + tasks + layout -> BranchedModel."""

from __future__ import annotations

import functools
import operator
from collections.abc import Mapping

from flax import nnx

from mtajax.models.branched import BlockFactory, BranchedModel, HeadFactory
from mtajax.models.heads import ASPPHead, ConvHead
from mtajax.models.layouts import (NUM_COARSE_BLOCKS, CoarseToFine, Layout, coarse_to_fine,
                                   enumerate_layouts, parse_layout)
from mtajax.models.mobilenet import (MOBILENETV2_COARSE_TO_FINE, MOBILENETV2_FEATURES,
                                     mobilenetv2_blocks)
from mtajax.models.resnet import RESNET34_COARSE_TO_FINE, RESNET34_FEATURES, deeplab_resnet34_blocks
from mtajax.models.small import (SMALL_COARSE_TO_FINE, SMALL_DEFAULT_WIDTH, small_features,
                                 small_resnet_blocks)

BACKBONES = ("resnet34", "mobilenetv2", "small")


def _check_backbone(backbone: str, width: int | None) -> None:
  if backbone not in BACKBONES:
    raise ValueError(f"Unknown backbone {backbone!r}; choose one of {BACKBONES}.")
  if width is not None and backbone != "small":
    raise ValueError(f"width applies to the 'small' backbone only; drop it for {backbone!r}.")


def backbone_blocks(backbone: str, *, width: int | None = None) -> list[BlockFactory]:
  """The fine block factories of ``backbone`` (``width`` only for ``'small'``)."""
  _check_backbone(backbone, width)
  if backbone == "resnet34":
    return deeplab_resnet34_blocks()
  if backbone == "mobilenetv2":
    return mobilenetv2_blocks()
  return small_resnet_blocks(SMALL_DEFAULT_WIDTH if width is None else width)


def coarse_mapping(backbone: str) -> CoarseToFine:
  """The coarse (5 blocks) -> fine block mapping of ``backbone``."""
  _check_backbone(backbone, None)
  return {"resnet34": RESNET34_COARSE_TO_FINE, "mobilenetv2": MOBILENETV2_COARSE_TO_FINE,
          "small": SMALL_COARSE_TO_FINE}[backbone]


def _head(backbone: str, out_ch: int, width: int | None) -> HeadFactory:
  if backbone == "resnet34":
    return functools.partial(ASPPHead, RESNET34_FEATURES, out_ch)
  if backbone == "mobilenetv2":
    return functools.partial(ASPPHead, MOBILENETV2_FEATURES, out_ch)
  width = SMALL_DEFAULT_WIDTH if width is None else width
  return functools.partial(ConvHead, small_features(width), out_ch, hidden=2 * width)


def resolve_layout(layout: Layout | str | int, num_tasks: int) -> Layout:
  """A layout given as a Layout, its string, or an index into ``enumerate_layouts(num_tasks)``."""
  if isinstance(layout, str):
    layout = parse_layout(layout)
  elif not isinstance(layout, Layout):
    layout = operator.index(layout)
    layouts = enumerate_layouts(num_tasks)
    if not 0 <= layout < len(layouts):
      raise ValueError(f"Layout index {layout} is out of range; {num_tasks} tasks have "
                       f"{len(layouts)} layouts (0..{len(layouts) - 1}).")
    layout = layouts[layout]
  if layout.num_tasks != num_tasks:
    raise ValueError(f"The layout is for {layout.num_tasks} tasks but {num_tasks} were given.")
  return layout


def fine_layout(backbone: str, layout: Layout | str | int, num_tasks: int) -> Layout:
  """Expands a coarse layout to ``backbone``'s fine blocks; a fine layout is returned unchanged."""
  layout = resolve_layout(layout, num_tasks)
  mapping = coarse_mapping(backbone)
  num_fine = sum(len(group) for group in mapping)
  if layout.num_blocks == NUM_COARSE_BLOCKS:
    return coarse_to_fine(layout, mapping)
  if layout.num_blocks == num_fine:
    return layout
  raise ValueError(f"A {backbone} layout needs {NUM_COARSE_BLOCKS} coarse or {num_fine} fine "
                   f"blocks, got {layout.num_blocks}.")


def build_model(backbone: str, tasks: Mapping[str, int], layout: Layout | str | int, *,
                width: int | None = None, identical_copies: bool = True,
                rngs: nnx.Rngs) -> BranchedModel:
  """Builds a branched multi-task model.

  Args:
    backbone: ``'resnet34'`` (Deeplab-ResNet34 + ASPP heads, OS 8), ``'mobilenetv2'`` (+ ASPP heads,
      OS 32) or ``'small'`` (small dilated ResNet + conv heads, OS 4).
    tasks: ordered task name -> output channels; task ``t`` of the layout is the ``t``-th name.
    layout: a coarse (5-block) or fine layout, its string, or a ``layout_idx``.
    width: base width of the ``'small'`` backbone (default 16).
    identical_copies: see :class:`BranchedModel`.
    rngs: initialisation randomness.
  """
  _check_backbone(backbone, width)
  fine = fine_layout(backbone, layout, len(tasks))
  heads = {name: _head(backbone, ch, width) for name, ch in tasks.items()}
  return BranchedModel(backbone_blocks(backbone, width=width), fine, heads,
                       identical_copies=identical_copies, rngs=rngs)
