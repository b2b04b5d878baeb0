"""Test setup: JAX's persistent compilation cache, shared by the xdist workers of one run, and the
fixtures shared by several test modules (their helpers are in fixtures.py)."""

import pathlib

import jax
import pytest

import mtajax  # noqa: F401  (applies the XLA:CPU workaround before JAX starts its backend)

import fixtures

_CACHE = pathlib.Path(__file__).resolve().parents[1] / ".jax_cache"
jax.config.update("jax_compilation_cache_dir", str(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture(scope="module", name="setup")
def fixture_setup():
  """The attack tests' toy net and images: (x, (params, labels))."""
  return fixtures.attack_setup()
