"""A tree-structured multi-task network from backbone blocks and a fine layout (spec §8.7)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax
from flax import nnx

from mtajax.models.layouts import Layout

BlockFactory = Callable[..., nnx.Module]  # called as factory(rngs=rngs)
HeadFactory = Callable[..., nnx.Module]  # called as factory(rngs=rngs); head(x, rng=key)


class BranchedModel(nnx.Module):
  """One copy of block ``i`` per task set of ``layout.blocks[i]``, wired as a tree, plus task heads.

  Copy ``g`` of block ``i`` reads the output of the copy of block ``i - 1`` whose task set contains
  its own; block-0 copies read the input. Each copy runs once per forward pass and feeds all its
  children.

  Args:
    blocks: one factory per fine block, in order.
    layout: a fine layout with ``len(blocks)`` blocks.
    heads: task name -> head factory; task ``t`` of the layout is the ``t``-th name.
    identical_copies: if True (TreeMTL clean training, the default) every copy of a block starts
      from the same weights, and the initial weights do not depend on the layout (for a given
      seed); if False (the reference's ``Deeplab_ASPP_Layout``) every copy is drawn independently.
    rngs: initialisation randomness (the ``params`` stream).
  """

  def __init__(self, blocks: Sequence[BlockFactory], layout: Layout,
               heads: Mapping[str, HeadFactory], *, identical_copies: bool = True,
               rngs: nnx.Rngs):
    if layout.num_blocks != len(blocks):
      raise ValueError(f"The layout has {layout.num_blocks} blocks but the backbone has "
                       f"{len(blocks)}; expand a coarse layout with coarse_to_fine first.")
    if layout.num_tasks != len(heads):
      raise ValueError(f"The layout has {layout.num_tasks} tasks but {len(heads)} heads were "
                       "given; pass one head per task.")
    self.layout = layout
    self.task_names = tuple(heads)
    copies = []
    for factory, task_sets in zip(blocks, layout.blocks):
      template_key = rngs.params()
      copies.append(nnx.List([
          factory(rngs=nnx.Rngs(params=template_key if identical_copies else rngs.params()))
          for _ in task_sets]))
    self.copies = nnx.List(copies)
    self.heads = nnx.List([factory(rngs=nnx.Rngs(params=rngs.params()))
                           for factory in heads.values()])
    self.parents = tuple(
        tuple(0 if i == 0 else layout.group_index(i - 1, min(s)) for s in task_sets)
        for i, task_sets in enumerate(layout.blocks))

  def _needed(self, tasks: Sequence[int]) -> list[set[int]]:
    """Indices of the copies of each block on the paths of ``tasks``."""
    blocks = self.layout.blocks
    needed = [{self.layout.group_index(len(blocks) - 1, t) for t in tasks}]
    for i in range(len(blocks) - 1, 0, -1):
      needed.insert(0, {self.parents[i][g] for g in needed[0]})
    return needed

  def __call__(self, x: jax.Array, *, tasks: Sequence[str] | None = None,
               rng: jax.Array | None = None) -> dict[str, jax.Array]:
    """Predictions ``{task: (B, h, w, C)}`` for ``tasks`` (default: all); ``rng`` feeds dropout.

    Only the copies on the selected tasks' paths are evaluated; the values are the same as in a full
    forward pass.
    """
    names = self.task_names if tasks is None else tuple(tasks)
    unknown = [n for n in names if n not in self.task_names]
    if unknown:
      raise ValueError(f"Unknown tasks {unknown}; this model predicts {list(self.task_names)}.")
    ids = [self.task_names.index(n) for n in names]
    needed = self._needed(ids)
    features = {0: x}
    for i, copies in enumerate(self.copies):
      features = {g: copies[g](features[self.parents[i][g]]) for g in sorted(needed[i])}
    last = self.layout.num_blocks - 1
    return {n: self.heads[t](features[self.layout.group_index(last, t)],
                             rng=None if rng is None else jax.random.fold_in(rng, t))
            for n, t in zip(names, ids)}
