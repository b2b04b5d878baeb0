"""One compiled attack serving several directions: :class:`Switched`, the direction a traced index.

Single-x, Total and GB-MTA (log) each take one backward pass of a weighted sum of per-sample losses,
so one program can serve all of them: the grid's and the robust suite's attacks (one compile per
model and attack instead of one per direction).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from mtajax.directions.base import Direction
# Names, not modules: the package's gbmta/switched attributes are the factory functions.
from mtajax.directions.gbmta import GBMTA
from mtajax.directions.plain import Single, Total
from mtajax.tasks import base


def switchable(direction: Direction) -> bool:
  """Whether :class:`Switched` can serve ``direction``: one backward pass of a weighted loss sum."""
  return isinstance(direction, (Single, Total)) or (
      isinstance(direction, GBMTA) and direction.method == "log")


@functools.partial(jax.tree_util.register_dataclass, data_fields=["index"],
                   meta_fields=["choices"])
@dataclasses.dataclass(frozen=True)
class Switched:
  """The direction ``choices[index]`` with ``index`` traced: one compiled attack serves them all.

  Each step runs one forward pass that yields both loss reductions, picks the chosen direction's
  cotangent weights on the per-sample losses (Single-x, Total: 1/B on the ``'pooled'`` losses;
  GB-MTA: 1/(B·L) on the ``'image'`` losses, 0 for its unusable terms) and pulls them back once:
  each direction keeps its reference loss reduction and its one backward pass. The weights and
  objectives of all choices are computed and indexed (elementwise work on (2, T, B) arrays), not
  branched: XLA:CPU runs nested computations (``lax.cond``/``switch`` branches, rolled loops)
  several times slower. The loss function must be a :class:`mtajax.tasks.loss_fn.LossFn` with the
  default attack loss.
  """
  choices: tuple[Direction, ...]
  index: Any = None  # int32 scalar (traced); None in the static spec

  reduction = "pooled"  # What the evaluation builds the loss function with (both are computed).

  def __post_init__(self):
    bad = [d for d in self.choices if not switchable(d)]
    if not self.choices or bad:
      raise ValueError(f"Switched serves Single, Total and GB-MTA (log) directions; got "
                       f"{bad or 'none'}. Fix: run other directions with one program each.")

  @property
  def name(self) -> str:
    return "|".join(d.name for d in self.choices)

  def at(self, index: Any) -> "Switched":
    return dataclasses.replace(self, index=jnp.asarray(index, jnp.int32))

  def _weights(self, d, losses: jax.Array, names: list[str]) -> jax.Array:
    """(2, T, B) cotangent of the ('pooled', 'image') per-sample losses for direction ``d``."""
    inv_b = 1.0 / losses.shape[-1]
    w = jnp.zeros_like(losses)
    if isinstance(d, Single):
      return w.at[0, names.index(d.task)].set(inv_b)
    if isinstance(d, Total):
      return w.at[0].set(inv_b)
    v = losses[1]  # GB-MTA
    ok = d.usable(v)
    return w.at[1].set(jnp.where(ok, inv_b / jnp.where(ok, v, 1.0), 0.0))

  @staticmethod
  def _both(loss_fn, labels):
    """``x -> (2, T, B)``: the per-sample losses of both reductions ('pooled', 'image')."""
    def f(x):
      preds = loss_fn.predict(x)
      return jnp.stack([jnp.stack([t.loss(preds[t.name], labels, r) for t in loss_fn.tasks])
                        for r in base.REDUCTIONS[::-1]])
    return f

  def _chosen(self, loss_fn, values: jax.Array) -> dict[str, jax.Array]:
    """The chosen direction's reduction of ``values`` (2, T, B), per task."""
    pooled = jnp.asarray([d.reduction == "pooled" for d in self.choices])[self.index]
    return {t.name: jnp.where(pooled, values[0, i], values[1, i])
            for i, t in enumerate(loss_fn.tasks)}

  def __call__(self, loss_fn, x, labels):
    names = [t.name for t in loss_fn.tasks]
    values, pullback = jax.vjp(self._both(loss_fn, labels), x)
    values = jax.lax.stop_gradient(values)
    w = jnp.stack([self._weights(d, values, names) for d in self.choices])[self.index]
    return pullback(w)[0], self._chosen(loss_fn, values)

  def losses(self, loss_fn, x, labels):
    """The losses :meth:`__call__` returns (the chosen direction's reduction), forward only."""
    return self._chosen(loss_fn, self._both(loss_fn, labels)(x))

  def init(self, loss_fn, x0, labels, losses0):
    """The losses at the start point as constants (GB-MTA's baselines; the others ignore it)."""
    del loss_fn, x0, labels
    return {t: jax.lax.stop_gradient(v) for t, v in losses0.items()}

  def objective(self, losses, state=None):
    return jnp.stack([d.objective(losses, state) for d in self.choices])[self.index]


def switched(choices: Sequence[Direction]) -> Switched:
  """A :class:`Switched` of ``choices`` (repeats dropped) in one order: Single-x as given, then
  Total, then GB-MTA. Callers with the same directions (the grid's PGD/APGD, the robust suite's
  APGD) then trace the same code, so host loops compile its direction program once for both."""
  def rank(d: Direction) -> int:
    return 2 if isinstance(d, GBMTA) else int(isinstance(d, Total))
  return Switched(tuple(sorted(dict.fromkeys(choices), key=rank)))
