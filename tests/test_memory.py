"""memory: compiled code released after each model of a sweep."""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import pytest

from mtajax import memory


# A sweep's process does not accumulate compiled code: `memory.release_compiled` after each model.
#
# Every XLA:CPU executable keeps its own memory mappings of machine code; a process that keeps a few
# hundred attack programs runs out of them (``LLVM ERROR: Unable to allocate section memory``).
# The programs below are compiled through one module-level ``jax.jit`` with a static function
# argument, as `mtajax.evaluate` compiles one program per model; benchmarks/compile_memory.py runs
# the same at the NYUv2 sweep's size.
@functools.partial(jax.jit, static_argnames="fn")
def _step(x, *, fn):
  for k in range(3):
    x = jnp.tanh(fn(x) * (k + 1.0))
  return x


def _mappings() -> int:
  with open("/proc/self/maps") as f:
    return sum(1 for _ in f)


def _growth(num_programs: int, release: bool) -> float:
  """Mappings added per compiled program."""
  memory.release_compiled(max_mappings=0)
  before = _mappings()
  for i in range(num_programs):
    fn = lambda x, i=i: jnp.sin(x @ x.T) * i  # pylint: disable=unnecessary-lambda-assignment
    _step(jnp.ones((8, 8)), fn=fn).block_until_ready()
    if release:
      memory.release_compiled(max_mappings=0)
  return (_mappings() - before) / num_programs


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux /proc")
def test_releasing_after_each_model_keeps_the_mappings_flat():
  kept = _growth(6, release=False)
  released = _growth(6, release=True)
  assert kept >= 5, f"the control should grow: {kept} mappings per program"  # ~20 measured
  assert released <= 1, f"{released} mappings per program remain after release_compiled"


def test_programs_are_kept_below_the_mapping_limit():
  _step(jnp.ones((8, 8)), fn=jnp.sin).block_until_ready()
  memory.release_compiled(max_mappings=10**9)  # Far below: the next model reuses them.
  assert _step._cache_size() >= 1  # pylint: disable=protected-access
  memory.release_compiled(max_mappings=0)
  assert _step._cache_size() == 0  # pylint: disable=protected-access
