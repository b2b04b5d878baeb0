"""Compile once per shape: a loss function or direction split into its static structure (compared
by value, functions by identity) and its arrays (traced).

Rebuilding ``make_loss_fn(partial(predict, state), ...)`` per batch then reuses the compiled attack
and keeps the weights traced, never baked into the program.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class _ById:
  """An unhashable static value, compared by identity."""
  value: Any

  def __hash__(self):
    return id(self.value)

  def __eq__(self, other):
    return isinstance(other, _ById) and other.value is self.value


@dataclasses.dataclass(frozen=True)
class Static:
  """The static part of a pytree: its structure and its non-array leaves (None where an array
  leaf goes)."""
  treedef: Any
  leaves: tuple[Any, ...]


def _is_array(v: Any) -> bool:
  return isinstance(v, (jax.Array, np.ndarray))


def _hashable(v: Any) -> Any:
  try:
    hash(v)
    return v
  except TypeError:
    return _ById(v)


def split(obj: Any) -> tuple[Static, list[jax.Array]]:
  """(static structure, array leaves) of a callable; ``functools.partial`` counts as a pytree."""
  if isinstance(obj, functools.partial) and not isinstance(obj, jax.tree_util.Partial):
    obj = jax.tree_util.Partial(obj.func, *obj.args, **obj.keywords)
  leaves, treedef = jax.tree.flatten(obj)
  static = tuple(None if _is_array(v) else _hashable(v) for v in leaves)
  return Static(treedef, static), [v for v in leaves if _is_array(v)]


def merge(static: Static, arrays: list[jax.Array]) -> Any:
  """Inverse of :func:`split`."""
  it = iter(arrays)
  leaves = [next(it) if v is None else (v.value if isinstance(v, _ById) else v)
            for v in static.leaves]
  return jax.tree.unflatten(static.treedef, leaves)


def static_options(options: dict[str, Any]) -> tuple[tuple[str, type, Any], ...]:
  """Static options as a hashable key; typed, so that ``True`` and ``1`` (equal in Python) are two
  programs."""
  return tuple((k, type(v), v) for k, v in sorted(options.items()))


def options_dict(options: tuple[tuple[str, type, Any], ...]) -> dict[str, Any]:
  """Inverse of :func:`static_options`."""
  return {k: v for k, _, v in options}
