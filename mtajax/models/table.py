"""Backbone parameter counts per layout and the paper's layout tables (Tables 16 and 17).

The paper's "#Params (M)" counts the backbone only, with conv weights plus ONE value per BatchNorm
channel (spec §8.9, Q33); ``count='all'`` counts every parameter (BN scale and bias).
Block sizes come from the real parameter shapes (``nnx.eval_shape``, nothing is allocated).
"""

from __future__ import annotations

import functools
import math
from typing import Literal, NamedTuple

import jax
from flax import nnx

from mtajax.models.build import backbone_blocks, fine_layout
from mtajax.models.layers import BatchNorm
from mtajax.models.layouts import (Layout, enumerate_layouts, is_independent, parse_layout,
                                   sharing_level)

Count = Literal["paper", "all"]

# Layouts printed in paper Tables 16 (NYUv2) and 17 (Tiny-Taskonomy), in the paper's row order.
PAPER_TABLE_INDICES = {
    ("resnet34", 3): (2, 9, 14, 4, 23, 10, 5, 28, 38, 41, 33, 39, 42, 44, 48, 26, 17, 34, 43, 49,
                      0),
    ("resnet34", 5): (4, 190, 348, 200, 469, 358, 481, 191, 959, 958, 1020, 1043, 1037, 0),
}
# Layouts the reference trained and attacked (spec §8.9; MobileNetV2: launch script).
TRAINED_LAYOUTS = {
    ("resnet34", 3): (0, 2, 4, 5, 9, 10, 11, 14, 17, 21, 23, 26, 28, 33, 34, 35, 36, 38, 39, 41, 42,
                      43, 44, 48, 49),
    ("mobilenetv2", 3): (0, 1, 4, 6, 7, 8, 9, 10, 11, 15, 16, 17, 23, 27, 31, 38, 39, 40, 48, 49),
    ("resnet34", 5): (0, 4, 190, 191, 200, 348, 352, 358, 469, 481, 958, 959, 1020, 1037, 1043),
}


@functools.cache
def block_params(backbone: str, count: Count = "paper",
                 width: int | None = None) -> tuple[int, ...]:
  """Parameters of each fine block of ``backbone``."""
  if count not in ("paper", "all"):
    raise ValueError(f"count must be 'paper' or 'all', got {count!r}.")
  sizes = []
  for factory in backbone_blocks(backbone, width=width):
    block = nnx.eval_shape(lambda f=factory: f(rngs=nnx.Rngs(0)))
    total = sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(block, nnx.Param)))
    if count == "paper":
      total -= sum(m.bias.shape[0] for _, m in nnx.iter_modules(block) if isinstance(m, BatchNorm))
    sizes.append(total)
  return tuple(sizes)


def layout_params(backbone: str, layout: Layout, *, count: Count = "paper",
                  width: int | None = None) -> int:
  """Backbone parameters of a (coarse or fine) layout: ``sum_i |S_i| * params(block i)``."""
  fine = fine_layout(backbone, layout, layout.num_tasks)
  return sum(n * p for n, p in zip(fine.copies_per_block,
                                   block_params(backbone, count, width), strict=True))


class LayoutRow(NamedTuple):
  """One table row: layout index, backbone #Params in millions, layout in the paper's notation."""
  index: int
  params_m: float
  layout: str

  @property
  def label(self) -> str:
    """'AS', 'IND' or the index, as the paper's "Model Index" column."""
    layout = parse_layout(self.layout)
    if sharing_level(layout) == layout.num_blocks:
      return "AS"
    return "IND" if is_independent(layout) else str(self.index)


def layout_table(backbone: str, num_tasks: int, indices: tuple[int, ...] | list[int] | None = None,
                 *, count: Count = "paper", width: int | None = None) -> list[LayoutRow]:
  """Rows for the coarse layouts ``indices`` (default: all) of ``num_tasks`` tasks."""
  layouts = enumerate_layouts(num_tasks)
  indices = range(len(layouts)) if indices is None else indices
  rows = []
  for i in indices:
    if not 0 <= i < len(layouts):
      raise ValueError(f"Layout index {i} is out of range 0..{len(layouts) - 1} for {num_tasks} "
                       "tasks.")
    params = layout_params(backbone, layouts[i], count=count, width=width)
    rows.append(LayoutRow(i, params / 1e6, str(layouts[i])))
  return rows


def format_layout_table(rows: list[LayoutRow]) -> str:
  """The rows as the paper prints them (``Model Index #Params (M) Layout``, 2 decimals)."""
  lines = ["Model Index #Params (M) Layout"]
  lines += [f"{row.label} {round(row.params_m, 2)} {row.layout}" for row in rows]
  return "\n".join(lines)
