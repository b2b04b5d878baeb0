"""Pure-function views of an NNX model for ``jax.jit`` / ``grad`` / ``vmap`` / ``lax.scan``.

The graph definition is captured once (``nnx.split``) and the module is rebuilt inside the traced
function (``nnx.merge``), so callers only handle pytrees of arrays.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
from flax import nnx

Predictions = dict[str, jax.Array]


def _view(model: nnx.Module, *, train: bool) -> nnx.Module:
  return nnx.view(model, deterministic=not train, use_running_average=not train,
                  raise_if_not_found=False)


def pure_predict(
    model: nnx.Module) -> tuple[Callable[[nnx.State, jax.Array], Predictions], nnx.State]:
  """Returns ``(predict, state)``: ``predict(state, x)`` is the eval-mode forward pass.

  Eval mode = BatchNorm running statistics and no dropout, as the attacks require. ``state`` holds
  the model's parameter and BatchNorm-statistic Variables (shared: in-place updates of ``model``,
  e.g. ``nnx.update``, are seen by ``predict``).
  """
  graphdef, state = nnx.split(_view(model, train=False))

  def predict(state: nnx.State, x: jax.Array) -> Predictions:
    return nnx.merge(graphdef, state)(x)

  return predict, state


# hash -> [(graph definitions, token)]: one token per distinct model structure seen.
_TOKENS: dict[int, list[tuple[tuple[nnx.GraphDef, nnx.GraphDef], object]]] = {}


@dataclasses.dataclass(frozen=True, eq=False)
class Apply:
  """``apply(params, batch_stats, x, *, train, rng=None) -> (predictions, new_batch_stats)``.

  Equal (and equally hashed) for models of equal graph definitions: a jitted function that takes
  it, or :class:`Predict`, as a static argument compiles once per model structure — the training
  loop's evaluation and the sweep's clean evaluation of the restored model share one program.
  """
  train_def: nnx.GraphDef
  eval_def: nnx.GraphDef

  def __post_init__(self):
    # Hashing or comparing graph definitions walks them (~7 ms), and a jit cache lookup compares
    # its static arguments: both are done once here, and equal definitions share one token.
    defs = (self.train_def, self.eval_def)
    digest = hash(defs)
    known = _TOKENS.setdefault(digest, [])
    token = next((t for d, t in known if d == defs), None)
    if token is None:
      token = object()
      known.append((defs, token))
    object.__setattr__(self, "_hash", digest)
    object.__setattr__(self, "_token", token)

  def __hash__(self) -> int:
    return self._hash

  def __eq__(self, other: object) -> bool:
    return isinstance(other, Apply) and self._token is other._token

  def __call__(self, params: nnx.State, batch_stats: nnx.State, x: jax.Array, *, train: bool,
               rng: jax.Array | None = None) -> tuple[Predictions, nnx.State]:
    if train and rng is None:
      raise ValueError("apply(train=True) needs rng (a jax.random key) for dropout; pass rng=key.")
    module = nnx.merge(self.train_def if train else self.eval_def, params, batch_stats, copy=True)
    predictions = module(x, rng=rng) if train else module(x)
    return predictions, nnx.state(module, nnx.BatchStat)


@dataclasses.dataclass(frozen=True)
class Predict:
  """``predict((params, batch_stats), x)``: the eval-mode forward pass of an :class:`Apply`."""
  apply: Apply

  def __call__(self, state: tuple[nnx.State, nnx.State], x: jax.Array) -> Predictions:
    return self.apply(state[0], state[1], x, train=False)[0]


def pure_apply(model: nnx.Module) -> tuple[Apply, nnx.State, nnx.State]:
  """Returns ``(apply, params, batch_stats)`` for training loops.

  ``apply(params, batch_stats, x, *, train, rng=None) -> (predictions, new_batch_stats)``. With
  ``train=True`` BatchNorm normalises with batch statistics and returns updated running
  statistics, and dropout draws its masks from ``rng`` (required); with ``train=False`` it is the
  eval forward pass and ``new_batch_stats`` equals ``batch_stats``. ``train`` must be a Python bool
  (static under jit).
  """
  train_def, params, batch_stats = nnx.split(_view(model, train=True), nnx.Param, nnx.BatchStat)
  return Apply(train_def, nnx.graphdef(_view(model, train=False))), params, batch_stats
