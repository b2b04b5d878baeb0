"""phases: wall and compile seconds per phase of the main job."""

from __future__ import annotations

import time


def test_phases_time_wall_and_compile():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from mtajax import phases as phases_lib  # pylint: disable=g-import-not-at-top
  phases = phases_lib.Phases()
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
