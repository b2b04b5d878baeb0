"""``jit`` for the programs mtajax's own host loops call: the per-step pieces of the Python attack
loop, the train step, the evaluation steps.

JAX dispatches a compiled call in C++ (microseconds) unless its program carries an effect; then
every call takes JAX's Python path, whose cost grows with the number of argument arrays (a model's
92-252 weight arrays on the quickstart: 1.8-5.8 ms per call). A ``checkify.debug_check`` is such
an effect even where it is a no-op (mtajax's checks of attack inputs and of segmentation labels,
which report only under a caller's ``checkify.checkify``). The main job calls these programs
~12,500 times; with the checks in them, Python dispatch was a sixth of its wall time (cProfile,
2026-12-03; ``benchmarks/dispatch.py`` measures it).

:func:`jit` discharges the checks inside the program (``checkify`` with no error enabled: they
compute nothing that is kept), so the C++ path serves every call. Use it only for functions that no
caller's ``checkify`` can wrap: those called from a host loop on concrete arrays. Attacks called
directly (``attacks.pgd``, …, under a user's ``jax.jit`` or ``checkify``) keep their checks.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
from jax.experimental import checkify


def jit(fn: Callable[..., Any], **jit_kwargs: Any) -> Any:
  """``jax.jit(fn, **jit_kwargs)`` with ``fn``'s ``checkify`` checks discharged (no effect left)."""

  @functools.wraps(fn)  # jax.jit reads static_argnames from fn's signature (__wrapped__).
  def unchecked(*args: Any, **kwargs: Any) -> Any:
    _, out = checkify.checkify(lambda: fn(*args, **kwargs), errors=frozenset())()
    return out

  return jax.jit(unchecked, **jit_kwargs)
