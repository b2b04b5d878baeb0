"""Releasing compiled programs before a long process runs out of memory mappings."""

from __future__ import annotations

import jax



def _mappings() -> tuple[int, int]:
  """(memory mappings this process holds, the kernel's limit ``vm.max_map_count``); (0, 1) where
  /proc is missing."""
  try:
    with open("/proc/self/maps") as f:
      held = sum(1 for _ in f)
    with open("/proc/sys/vm/max_map_count") as f:
      return held, int(f.read())
  except OSError:
    return 0, 1


def release_compiled(max_mappings: int | None = None) -> None:
  """Drops every compiled program once the process holds more than ``max_mappings`` memory
  mappings (None: a quarter of ``vm.max_map_count``; 0: always). The sweep calls it after each model.

  Every XLA:CPU program holds its own memory mappings of machine code (~20–60), so a sweep of
  hundreds of programs in one process would exhaust them (``LLVM ERROR: Unable to allocate section
  memory``). Below the limit the programs are kept: the next model reuses the small ones (its
  initialisers' random draws and the eager operations compile once per shape, several seconds per
  model on 2 CPU cores). Without /proc it always releases. The on-disk compilation cache is kept.
  """
  held, limit = _mappings()
  if held >= (limit // 4 if max_mappings is None else max_mappings):
    jax.clear_caches()
