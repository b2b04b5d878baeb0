"""Test setup: XLA:CPU at backend optimisation level 0 and JAX's persistent compilation cache, both
shared by the xdist workers and the subprocesses of one run, and the fixtures shared by several test
modules (their helpers are in fixtures.py).

Level 0 (what ``XLA_FLAGS=--xla_backend_optimization_level=0`` gives the main job): the suite's time
is mostly XLA:CPU compiling its programs, which level 0 does about twice as fast. The numerics tests compare with tolerances or
between programs compiled alike, and the XLA:CPU miscompilation that ``mtajax.platform`` works
around shows at level 0 as well (its regression test fails there without the workaround). A level
given in ``XLA_FLAGS`` (e.g. ``--xla_backend_optimization_level=3``) is kept.
"""

import os
import pathlib

_CACHE = pathlib.Path(__file__).resolve().parents[1] / ".jax_cache"
# Inherited by the main-job subprocesses and notebook kernels too: one cache of every compiled
# program, however quickly it compiled (at level 0 most compile in well under a second).
os.environ.setdefault("MTAJAX_JAX_CACHE", str(_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_backend_optimization_level=0").strip()

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest

import mtajax  # noqa: F401  (applies the XLA:CPU workaround before JAX starts its backend)

import fixtures

jax.config.update("jax_compilation_cache_dir", os.environ["MTAJAX_JAX_CACHE"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))


@pytest.fixture(scope="module", name="setup")
def fixture_setup():
  """The attack tests' toy net and images: (x, (params, labels))."""
  return fixtures.attack_setup()
