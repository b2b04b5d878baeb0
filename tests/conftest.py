"""Test setup: XLA:CPU at backend optimisation level 0 and JAX's persistent compilation cache, both
shared by the xdist workers and the subprocesses of one run, and the fixtures shared by several test
modules (their helpers are in fixtures.py).

Level 0 (what ``XLA_FLAGS=--xla_backend_optimization_level=0`` gives the main job): the suite's time
is mostly XLA:CPU compiling its programs, which level 0 does about twice as fast. The numerics tests compare with tolerances or
between programs compiled alike, and the XLA:CPU miscompilation that ``mtajax.platform`` works
around shows at level 0 as well (its regression test fails there without the workaround). A level
given in ``XLA_FLAGS`` (e.g. ``--xla_backend_optimization_level=3``) is kept.

Direct attack calls with ``loop=None`` run the Python loop (``MTAJAX_DEFAULT_LOOP=python``; on CPU
their default is the unrolled scan): each attack's step compiles once, shared by the tests and
directions that use it, instead of one program of N unrolled steps per test (the suite's attack
modules: ~30 % less XLA compile time). The Python, rolled and unrolled loops are checked equal on
every iterative attack in test_attacks_loop.py; under a trace (``jax.jit``, ``vmap``) the attacks
run the rolled scan. mtajax's own evaluations keep their default (``MTAJAX_ATTACK_LOOP`` is not
set).
"""

import fcntl
import os
import pathlib
import shutil

_CACHE = pathlib.Path(__file__).resolve().parents[1] / ".jax_cache"
# Inherited by the main-job subprocesses and notebook kernels too: one cache of every compiled
# program, however quickly it compiled (at level 0 most compile in well under a second).
os.environ.setdefault("MTAJAX_JAX_CACHE", str(_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# No XLA GPU caches beside it: their paths (under the cache folder) and the process index enter
# the compile options, hence every program's cache key, so a copy of the cache in another folder
# (the SIGKILLed runs') or process 1 of a 2-process run would miss every program.
os.environ.setdefault("JAX_PERSISTENT_CACHE_ENABLE_XLA_CACHES", "none")
os.environ.setdefault("MTAJAX_DEFAULT_LOOP", "python")
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


# The longest modules (whole-job runs and notebooks), longest first: scheduled first, so that the
# two xdist workers end together instead of one running a long module at the end alone.
FIRST = ("test_run.py", "test_parallel.py", "test_notebooks.py", "test_run_import.py",
         "test_robust_sweep.py", "test_locks.py", "test_train_config.py")


def pytest_configure(config):
  """--dist loadscope hands modules out in collection order (not xdist's default: most tests
  first)."""
  if hasattr(config.option, "loadscopereorder"):
    config.option.loadscopereorder = False


def _rank(item: pytest.Item) -> int:
  return FIRST.index(item.path.name) if item.path.name in FIRST else len(FIRST)


def pytest_collection_modifyitems(items):
  """The modules of FIRST first, in that order; the rest as collected."""
  items.sort(key=_rank)  # Stable: each module's tests keep their order.


@pytest.fixture(scope="module", name="setup")
def fixture_setup():
  """The attack tests' toy net and images: (x, (params, labels))."""
  return fixtures.attack_setup()


@pytest.fixture(scope="session")
def smoke_sweep(tmp_path_factory) -> pathlib.Path:
  """The root of the session's one smoke sweep (fixtures.smoke_sweep), built by the first xdist
  worker that asks while the others wait on a file lock. Read-only: copy it (fixtures.
  copy_smoke_sweep) to write."""
  base = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    base = base.parent  # The session's folder, above each worker's own.
  root = base / "smoke_sweep"
  with open(base / "smoke_sweep.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (root / "done").exists():
      shutil.rmtree(root, ignore_errors=True)  # What a failed build left.
      fixtures.smoke_sweep(root)
      (root / "done").touch()
  return root
