"""sweep: wall and compile seconds per phase, and compiled code released after each model."""

from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
import pytest

from mtajax import sweep


def test_phases_time_wall_and_compile():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from mtajax import sweep  # pylint: disable=g-import-not-at-top
  phases = sweep.Phases()
  with phases("data"):
    time.sleep(0.05)
  with phases("attacks"):
    f = jax.jit(lambda x: jnp.sin(x) * 3.0 + jnp.cos(x))  # A new function: traced and compiled.
    f(jnp.arange(7.0)).block_until_ready()
  with phases("data"):  # Re-entering a phase adds to it.
    time.sleep(0.05)
  assert phases.wall["data"] >= 0.1
  assert phases.compile.get("data", 0.0) == 0.0  # Nothing compiled there.
  assert 0 < phases.compile["attacks"] <= phases.wall["attacks"]
  lines = phases.summary().splitlines()
  assert [line.split()[0] for line in lines] == ["phase", "data", "attacks", "total"]
  assert float(lines[-1].split()[1]) >= 0.1


# A sweep's process does not accumulate compiled code: `sweep.release_compiled` after each model.
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
  sweep.release_compiled(max_mappings=0)
  before = _mappings()
  for i in range(num_programs):
    fn = lambda x, i=i: jnp.sin(x @ x.T) * i  # pylint: disable=unnecessary-lambda-assignment
    _step(jnp.ones((8, 8)), fn=fn).block_until_ready()
    if release:
      sweep.release_compiled(max_mappings=0)
  return (_mappings() - before) / num_programs


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux /proc")
def test_releasing_after_each_model_keeps_the_mappings_flat():
  kept = _growth(6, release=False)
  released = _growth(6, release=True)
  assert kept >= 5, f"the control should grow: {kept} mappings per program"  # ~20 measured
  assert released <= 1, f"{released} mappings per program remain after release_compiled"


def test_programs_are_kept_below_the_mapping_limit():
  _step(jnp.ones((8, 8)), fn=jnp.sin).block_until_ready()
  sweep.release_compiled(max_mappings=10**9)  # Far below: the next model reuses them.
  assert _step._cache_size() >= 1  # pylint: disable=protected-access
  sweep.release_compiled(max_mappings=0)
  assert _step._cache_size() == 0  # pylint: disable=protected-access
