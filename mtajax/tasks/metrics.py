"""Streaming metrics over a task set.

The state is ``{task name: {term: array}}``; every leaf is a sum, so states from different batches
or devices combine with :func:`merge` (or ``jax.lax.psum`` inside a mapped function).
:func:`update` is jit-compatible; :func:`compute` runs on the host.

Batch dependence: with ``definition='reference'``, Pixel Acc, abs_err, rel_err and the Taskonomy
errors (err, abs_err, key_err, edge_err) are batch-size-weighted means of per-batch pooled values
(spec Q19) and so depend on how the data is batched (and on how a batch is split across devices);
mIoU, the normal metrics and the depth sigmas are global pixel statistics and do not.
With ``definition='standard'`` every metric is batch-independent.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

from mtajax.tasks import base

State = dict[str, base.MetricState]


def init(tasks: Sequence[base.Task]) -> State:
  """Zero state for ``tasks``."""
  return {t.name: t.metric_init() for t in tasks}


def update(tasks: Sequence[base.Task], state: State, preds: Mapping[str, jax.Array],
           batch: base.Batch) -> State:
  """Adds one batch of predictions ``{task name: (B, h, w, C)}`` to ``state``."""
  return {t.name: t.metric_update(state[t.name], preds[t.name], batch) for t in tasks}


def merge(a: State, b: State) -> State:
  """Sum of two states (from different batches or devices)."""
  return jax.tree.map(jnp.add, a, b)


def compute(tasks: Sequence[base.Task], state: State) -> dict[str, dict[str, float]]:
  """``{task name: {metric name: value}}`` in the reference's units."""
  return {t.name: t.metric_compute(state[t.name]) for t in tasks}
