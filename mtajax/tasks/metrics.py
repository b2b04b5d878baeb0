"""Streaming metrics over a task set.

The state is ``{task name: {term: array}}``; every leaf is a sum, so states from different batches
or devices combine with :func:`merge` (or ``jax.lax.psum`` inside a mapped function).
:func:`update` is jit-compatible; :func:`compute` runs on the host.

Integer counters of a device state are int32: :func:`update` and :func:`merge` saturate them at
2^31 - 1 and :func:`compute` then raises (``psum`` wraps). An :class:`Accumulator` instead sums
per-batch states on the host in int64 / float64 (they cannot wrap) and keeps the per-pixel samples
of exact statistics (the Angle Median) within a budget; :func:`mtajax.evaluate.evaluate` uses it.

Batch dependence: with ``definition='reference'``, Pixel Acc, abs_err, rel_err and the Taskonomy
errors (err, abs_err, key_err, edge_err) are batch-size-weighted means of per-batch pooled values
(spec Q19) and so depend on how the data is batched (and on how a batch is split across devices);
mIoU, the normal metrics and the depth sigmas are global pixel statistics and do not.
With ``definition='standard'`` every metric is batch-independent.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import numpy as np

from mtajax.tasks import base

State = dict[str, base.MetricState]
SAMPLE_BUDGET = 2**28  # per-pixel values per sampled metric kept on the host: 1 GiB of float32


def init(tasks: Sequence[base.Task]) -> State:
  """Zero state for ``tasks``."""
  return {t.name: t.metric_init() for t in tasks}


def update(tasks: Sequence[base.Task], state: State, preds: Mapping[str, jax.Array],
           batch: base.Batch) -> State:
  """Adds one batch of predictions ``{task name: (B, h, w, C)}`` to ``state``."""
  return {t.name: t.metric_update(state[t.name], preds[t.name], batch) for t in tasks}


def samples(tasks: Sequence[base.Task], preds: Mapping[str, jax.Array],
            batch: base.Batch) -> dict[str, dict[str, tuple[jax.Array, jax.Array]]]:
  """Per-pixel ``{task: {name: (values, keep)}}`` of one batch (``Task.metric_samples``)."""
  return {t.name: t.metric_samples(preds[t.name], batch) for t in tasks}


def merge(a: State, b: State) -> State:
  """Sum of two states (from different batches or devices)."""
  return base.add_states(a, b)


def compute(tasks: Sequence[base.Task], state: State) -> dict[str, dict[str, float]]:
  """``{task name: {metric name: value}}`` in the reference's units."""
  return {t.name: t.metric_compute(state[t.name]) for t in tasks}


class Accumulator:
  """Host-side sum of per-batch states: int64 counters, float64 sums, exact per-pixel samples.

  Feed it :func:`update` of each batch from a zero state (with its :func:`samples`), copied to the
  host; the samples of one metric are kept until more than ``sample_budget`` were offered, after
  which that metric uses its streaming fallback (the median histogram).
  """

  def __init__(self, tasks: Sequence[base.Task], sample_budget: int = SAMPLE_BUDGET):
    if sample_budget < 0:
      raise ValueError(f"sample_budget must be >= 0 values, got {sample_budget}.")
    self.tasks, self.sample_budget = tuple(tasks), sample_budget
    self.state: State | None = None

  def add(self, update: State, batch_samples: Mapping[str, Mapping[str, Any]] | None = None
          ) -> None:
    """Adds one batch: ``update`` and ``batch_samples`` as host (NumPy) arrays or device arrays."""
    update = jax.tree.map(_widen, jax.device_get(update))
    for task, named in (batch_samples or {}).items():
      for name, (values, keep) in named.items():
        kept = np.asarray(values, np.float32)[np.asarray(keep, bool)]
        update[task][name] = base.Samples.of(kept, self.sample_budget)
    self.state = update if self.state is None else merge(self.state, update)

  def compute(self) -> dict[str, dict[str, float]]:
    """:func:`compute` of the accumulated state."""
    if self.state is None:
      raise ValueError("Accumulator.compute() before any add(); feed at least one batch.")
    return compute(self.tasks, self.state)


def _widen(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x)
  if np.issubdtype(x.dtype, np.integer):
    return x.astype(np.int64)
  return x.astype(np.float64) if np.issubdtype(x.dtype, np.floating) else x
