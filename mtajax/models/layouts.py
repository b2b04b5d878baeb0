"""TreeMTL layouts: which tasks share which copy of each backbone block.

A layout over ``B`` blocks and ``T`` tasks is a tuple of blocks; block ``i`` is a tuple of disjoint
task sets covering ``{0, ..., T-1}`` (the tasks in one set share one copy of block ``i``), and every
set at block ``i + 1`` lies inside one set at block ``i`` (a tree). The order of the sets is kept
for printing (it is the order TreeMTL builds the block copies in); equality ignores it, as in
TreeMTL.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import itertools
from collections.abc import Iterable, Sequence

TaskSet = frozenset[int]
Block = tuple[TaskSet, ...]

# Coarse block c expands to fine blocks mapping[c] (spec §8.3).
CoarseToFine = tuple[tuple[int, ...], ...]

NUM_COARSE_BLOCKS = 5


def _set_str(task_set: Iterable[int]) -> str:
  return "{" + ", ".join(str(t) for t in sorted(task_set)) + "}"


def _block_str(block: Iterable[Iterable[int]]) -> str:
  return "[" + ", ".join(_set_str(s) for s in block) + "]"


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Layout:
  """An immutable, validated layout; build it from any nested iterable of task sets."""

  blocks: tuple[Block, ...]

  def __post_init__(self):
    try:
      blocks = tuple(tuple(frozenset(int(t) for t in s) for s in block) for block in self.blocks)
    except (TypeError, ValueError) as e:
      raise ValueError(f"Layout blocks must be sequences of sets of task indices ({e}); "
                       "pass e.g. [[{0, 1, 2}], [{0}, {1, 2}]].") from None
    object.__setattr__(self, "blocks", blocks)
    _validate(blocks)

  @property
  def num_blocks(self) -> int:
    return len(self.blocks)

  @property
  def num_tasks(self) -> int:
    return sum(len(s) for s in self.blocks[0])

  @property
  def copies_per_block(self) -> tuple[int, ...]:
    """Number of copies of each block (``|S_i|``)."""
    return tuple(len(block) for block in self.blocks)

  def group_index(self, block: int, task: int) -> int:
    """Position (in list order) of the set holding ``task`` at ``block``."""
    for g, task_set in enumerate(self.blocks[block]):
      if task in task_set:
        return g
    raise ValueError(f"Task {task} is not in this {self.num_tasks}-task layout; "
                     f"use a task index in 0..{self.num_tasks - 1}.")

  def canonical(self) -> tuple[frozenset[TaskSet], ...]:
    """Order-insensitive form: equal layouts have equal canonical forms."""
    return tuple(frozenset(block) for block in self.blocks)

  def __eq__(self, other: object) -> bool:
    if not isinstance(other, Layout):
      return NotImplemented
    return self.canonical() == other.canonical()

  def __hash__(self) -> int:
    return hash(self.canonical())

  def __str__(self) -> str:
    """The paper's notation, i.e. Python ``str`` of a list of lists of sets."""
    return "[" + ", ".join(_block_str(block) for block in self.blocks) + "]"

  def __repr__(self) -> str:
    return f"Layout({str(self)!r})"


def _validate(blocks: tuple[Block, ...]) -> None:
  if not blocks:
    raise ValueError("A layout needs at least one block; pass e.g. [[{0, 1, 2}]].")
  tasks = frozenset().union(*blocks[0])
  if not tasks or tasks != frozenset(range(len(tasks))):
    raise ValueError(f"Block 0 covers tasks {sorted(tasks)}; the tasks must be 0..T-1.")
  for i, block in enumerate(blocks):
    if any(not s for s in block):
      raise ValueError(f"Block {i} has an empty task set; remove it.")
    if sum(len(s) for s in block) != len(tasks) or frozenset().union(*block) != tasks:
      raise ValueError(f"Block {i} {_block_str(block)} does not partition the tasks "
                       f"{_set_str(tasks)}; every task must be in exactly one set.")
    if i and any(not any(s <= parent for parent in blocks[i - 1]) for s in block):
      raise ValueError(f"Block {i} splits tasks that are already separated at block {i - 1}; "
                       "every set must lie inside one set of the previous block.")


def parse_layout(text: str) -> Layout:
  """Parses the paper's notation, e.g. ``'[[{0, 1, 2}], [{1}, {0, 2}]]'``."""
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    raise ValueError(f"Cannot parse layout {text!r}; write it like '[[{{0, 1, 2}}], "
                     "[{1}, {0, 2}]]'.") from None
  if not isinstance(value, (list, tuple)) or not all(
      isinstance(b, (list, tuple)) and all(isinstance(s, (set, frozenset)) for s in b)
      for b in value):
    raise ValueError(f"Layout {text!r} must be a list of lists of sets of task indices.")
  return Layout(value)


def all_shared(num_tasks: int, num_blocks: int = NUM_COARSE_BLOCKS) -> Layout:
  """The all-shared (AS) layout."""
  return Layout([[range(num_tasks)]] * num_blocks)


def sharing_level(layout: Layout) -> int:
  """Number of leading blocks shared by all tasks (AS: ``num_blocks``, independent: 0)."""
  return next((i for i, block in enumerate(layout.blocks) if len(block) > 1), layout.num_blocks)


def is_independent(layout: Layout) -> bool:
  """True when every task has its own copy of every block (IND)."""
  return len(layout.blocks[0]) == layout.num_tasks


def _divide(task_set: TaskSet) -> list[tuple[TaskSet, TaskSet]]:
  """TreeMTL's ``divide_set``: all 2-partitions, in its itertools.product order."""
  elements = sorted(task_set)
  pairs = []
  for pattern in itertools.product((True, False), repeat=len(elements)):
    if not pattern[0] and any(pattern):
      first = frozenset(t for t, keep in zip(elements, pattern) if keep)
      pairs.append((first, task_set - first))
  return pairs


@functools.cache
def enumerate_layouts(num_tasks: int, num_blocks: int = NUM_COARSE_BLOCKS) -> tuple[Layout, ...]:
  """All distinct layouts in TreeMTL's ``enum_layout_wo_rdt`` order (``layout_idx`` indexes it).

  Reproduces the reference depth-first search exactly; its O(n^2) "already listed?" scan is replaced
  by a set of canonical forms, which accepts and rejects the same candidates.
  """
  if num_tasks < 1 or num_blocks < 1:
    raise ValueError(f"Need num_tasks >= 1 and num_blocks >= 1, got {num_tasks} and {num_blocks}.")
  root = tuple((frozenset(range(num_tasks)),) for _ in range(num_blocks))
  found = [root]
  seen = {tuple(frozenset(b) for b in root)}

  def search(state: tuple[Block, ...], num_cut: int, lowest_avail_cut: int) -> None:
    if num_cut >= num_tasks - 1:
      return
    for i in range(lowest_avail_cut, num_blocks):
      for task_set in state[i]:
        if len(task_set) == 1:
          continue
        for pair in _divide(task_set):
          new = state[:i] + tuple(tuple(s for s in block if s != task_set) + pair
                                  for block in state[i:])
          key = tuple(frozenset(b) for b in new)
          if key not in seen:
            seen.add(key)
            found.append(new)
            search(new, num_cut + 1, i)

  search(root, 0, 0)
  return tuple(Layout(state) for state in found)


def coarse_to_fine(layout: Layout, mapping: Sequence[Sequence[int]]) -> Layout:
  """Expands a coarse layout: fine block ``f`` gets the sets of coarse block ``c`` ∋ ``f``.

  ``mapping[c]`` lists the fine blocks of coarse block ``c``.
  """
  if len(mapping) != layout.num_blocks:
    raise ValueError(f"The mapping has {len(mapping)} coarse blocks but the layout has "
                     f"{layout.num_blocks}; use the backbone's coarse-to-fine mapping.")
  fine = [f for group in mapping for f in group]
  if fine != list(range(len(fine))):
    raise ValueError(f"Mapping {mapping} must list fine blocks 0..F-1 in order, each once.")
  return Layout([block for block, group in zip(layout.blocks, mapping) for _ in group])
