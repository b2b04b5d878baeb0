"""Test setup: JAX's persistent compilation cache, shared by the xdist workers of one run."""

import pathlib

import jax

import mtajax  # noqa: F401  (applies the XLA:CPU workaround before JAX starts its backend)

_CACHE = pathlib.Path(__file__).resolve().parents[1] / ".jax_cache"
jax.config.update("jax_compilation_cache_dir", str(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
