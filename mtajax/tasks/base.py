"""The task interface: one frozen object per task owns its loss, validity rule and metrics.

A task sees predictions ``pred`` (B, h, w, C) at feature resolution and its labels
``batch[task.name]`` (plus an optional ``batch[task.name + '_mask']``) at label resolution.

Losses bring labels down to (h, w) with the reference nearest rule and reduce per image:

* ``reduction='image'``: the reference's ``'none'`` criterion, one masked mean per image.
* ``reduction='pooled'``: per-sample contributions ``R * s_b / sum_b' n_b'`` whose mean over the R
  real examples (:func:`batch_mean`) is the reference's batch-pooled ``'mean'`` criterion (same
  value, same gradient: the denominators come from labels only).

A batch may mark padding with ``batch['example_weight']`` (B,), 0 for a padding example and 1 for
a real one (the evaluation loaders' padded last batch). Padding examples have loss 0, are left out
of the pooled denominators and of R, and are skipped by the metrics; without the key every example
is real.

An image without a valid pixel gets loss 0 instead of the reference's NaN (spec Q25); see it with
:meth:`Task.valid_count`.

Metrics bring predictions up to label resolution and accumulate into a dict of arrays whose
leaves add up across batches and devices (:func:`mtajax.tasks.metrics.merge`, ``lax.psum``).
Integer counters are int32 on the device, where :func:`add_states` saturates them at 2^31 - 1 and
:func:`host_state` then refuses them; :class:`mtajax.tasks.metrics.Accumulator` sums per-batch
states on the host in int64 / float64 instead.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Literal, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mtajax.tasks.resize import resize_nearest

Batch = Mapping[str, jax.Array]
MetricState = dict[str, jax.Array]
Reduction = Literal["image", "pooled"]
Definition = Literal["reference", "standard"]

REDUCTIONS = ("image", "pooled")
DEFINITIONS = ("reference", "standard")


def check_choice(field: str, value: Any, choices: tuple[Any, ...]) -> None:
  """Raises a one-line ValueError unless ``value`` is one of ``choices``."""
  if value not in choices:
    raise ValueError(f"{field}={value!r} is not supported; use one of {choices}.")


def safe_divide(num: jax.Array, den: jax.Array) -> jax.Array:
  """``num / den`` where ``den > 0`` and 0 elsewhere, with finite gradients everywhere."""
  ok = den > 0
  return jnp.where(ok, num / jnp.where(ok, den, 1), 0)


def l2_normalize(x: jax.Array) -> jax.Array:
  """``x / max(||x||, 1e-12)`` along the last axis (PyTorch ``F.normalize``), NaN-free gradients."""
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-24))


def example_mask(batch: Batch, size: int) -> jax.Array:
  """(B,) bool, False for the padding examples that ``batch['example_weight'] == 0`` marks."""
  weight = batch.get("example_weight")
  return jnp.ones(size, bool) if weight is None else jnp.asarray(weight) > 0


def real_pixels(valid: jax.Array, batch: Batch) -> tuple[jax.Array, jax.Array]:
  """``valid`` (B, H, W) without the padding examples' pixels, and the real examples' count."""
  real = example_mask(batch, valid.shape[0])
  return valid & real[:, None, None], jnp.sum(real, dtype=jnp.float32)


def batch_mean(values: jax.Array, batch: Batch) -> jax.Array:
  """Mean of per-sample ``values`` (B,) over the real examples of ``batch``."""
  real = example_mask(batch, values.shape[0])
  return jnp.sum(jnp.where(real, values, 0)) / jnp.sum(real, dtype=jnp.float32)


def mean_state(name: str, sums: jax.Array, counts: jax.Array,
               size: jax.Array | None = None) -> MetricState:
  """Accumulator terms of a masked mean from per-image ``sums`` and valid ``counts`` (B,).

  Keeps both the reference's batch-size-weighted mean of per-batch pooled values (spec Q19; a
  batch without valid pixels is skipped instead of giving NaN) and the pixel-weighted sums.
  ``size`` is the batch's number of real examples (default B). NumPy ``sums`` and ``counts`` (the
  worst-case search regrouping per-image states on the host) give NumPy terms, float32 as well:
  the same formula without a device dispatch per operation (``robust.summarise`` ~2x faster).
  """
  if isinstance(sums, np.ndarray) and isinstance(counts, np.ndarray):
    total, n = np.sum(sums), np.sum(counts)
    weight = np.float32((counts.shape[0] if size is None else size) if n > 0 else 0)
    mean = np.float32(total) / np.float32(n) if n > 0 else np.float32(0)
  else:
    total, n = jnp.sum(sums), jnp.sum(counts)
    size = jnp.float32(counts.shape[0]) if size is None else size
    weight = jnp.where(n > 0, size, 0.0)
    mean = safe_divide(total, n.astype(jnp.float32))
  return {
      f"{name}/batch_sum": weight * mean,
      f"{name}/batch_weight": weight,
      f"{name}/pixel_sum": total.astype(jnp.float32),
      f"{name}/pixel_count": n.astype(count_dtype(counts)),
  }


def count_dtype(counts: jax.Array) -> jnp.dtype:
  """int32 for pixel counts, float32 for weight sums."""
  return jnp.int32 if jnp.issubdtype(counts.dtype, jnp.integer) else jnp.float32


def zero_mean_state(name: str, weighted: bool = False) -> MetricState:
  """Zero :func:`mean_state` terms; ``weighted`` for float (weight-sum) denominators."""
  return mean_state(name, jnp.zeros(1, jnp.float32),
                    jnp.zeros(1, jnp.float32 if weighted else jnp.int32))


def add_states(a: Any, b: Any) -> Any:
  """Leafwise ``a + b`` of two metric states; int32 device counters saturate instead of wrapping."""
  return jax.tree.map(_add, a, b)


def _add(x: Any, y: Any) -> Any:
  total = x + y
  if isinstance(total, (np.ndarray, np.generic, Samples)) or not jnp.issubdtype(
      total.dtype, jnp.integer):
    return total  # Host leaves: int64 sums, float64 sums and samples.
  # Increments are non-negative, so a sum below its old value has wrapped.
  return jnp.where(total < x, jnp.iinfo(total.dtype).max, total)


def host_state(task: str, state: MetricState) -> MetricState:
  """``state`` on the host, or a one-line error if an int32 counter reached its limit."""
  state = jax.device_get(state)
  for term, value in state.items():
    if isinstance(value, Samples):
      continue
    value = np.asarray(value)
    if value.dtype == np.int32 and (np.any(value == np.iinfo(np.int32).max) or np.any(value < 0)):
      raise ValueError(f"Task {task!r} counter {term!r} reached the int32 limit 2^31 - 1; sum "
                       "per-batch states on the host with mtajax.tasks.metrics.Accumulator (as "
                       "mtajax.evaluate does) instead of one device state.")
  return state


@dataclasses.dataclass(frozen=True)
class Samples:
  """Per-pixel values a host state keeps for exact order statistics (``a + b`` merges them).

  Once more than ``budget`` values were offered, the chunks are dropped, ``values()`` is None and
  the task falls back to its histogram.
  """
  chunks: tuple[np.ndarray, ...]
  budget: int
  count: int  # values offered so far

  @classmethod
  def of(cls, values: np.ndarray, budget: int) -> "Samples":
    """One chunk of values (already full if it alone exceeds ``budget``)."""
    return cls((values,) if len(values) <= budget else (), budget, len(values))

  @property
  def full(self) -> bool:
    return self.count > self.budget

  def __add__(self, other: "Samples") -> "Samples":
    budget, count = min(self.budget, other.budget), self.count + other.count
    return Samples(() if count > budget else self.chunks + other.chunks, budget, count)

  def values(self) -> np.ndarray | None:
    if self.full:
      return None
    return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)


def mean_value(state: Mapping[str, np.ndarray], name: str, definition: Definition,
               task: str) -> float:
  """Dataset value of a :func:`mean_state` metric: batch-weighted (reference) or pixel-weighted."""
  if definition == "reference":
    num, den = state[f"{name}/batch_sum"], state[f"{name}/batch_weight"]
  else:
    num, den = state[f"{name}/pixel_sum"], state[f"{name}/pixel_count"]
  return float(num) / float(require_positive(den, task, name))


def require_positive(count: Any, task: str, metric: str) -> float:
  """Returns ``count`` as a float, or raises if no valid pixel was accumulated."""
  count = float(count)
  if not count > 0:
    raise ValueError(f"Task {task!r} accumulated no valid pixel for {metric!r}; feed batches with "
                     f"valid labels before computing metrics.")
  return count


def check_finite(task: str, values: dict[str, float]) -> dict[str, float]:
  """Returns ``values``, or raises if a metric is NaN or infinite (e.g. from NaN predictions)."""
  bad = {k: v for k, v in values.items() if not np.isfinite(v)}
  if bad:
    raise ValueError(f"Task {task!r} metrics {bad} are not finite; check the predictions for "
                     f"NaN/inf.")
  return values


def label_mask(batch: Batch, name: str, hw: tuple[int, int] | None = None) -> jax.Array | None:
  """``batch[name + '_mask'] == 1`` at resolution ``hw`` (None when the batch has no mask)."""
  mask = batch.get(f"{name}_mask")
  if mask is None:
    return None
  if hw is not None:
    mask = resize_nearest(mask, hw)
  return mask == 1


def reduce_loss(num: jax.Array, den: jax.Array, reduction: Reduction,
                batch: Batch | None = None) -> jax.Array:
  """Per-sample loss (B,) from per-pixel numerators and weights (B, h, w) (see the module doc).

  ``batch``'s ``example_weight`` (if any) marks the padding examples: loss 0, not pooled.
  """
  real = example_mask({} if batch is None else batch, num.shape[0])
  num = jnp.where(real, jnp.sum(num, axis=(1, 2)), 0)
  den = jnp.where(real, jnp.sum(den, axis=(1, 2)), 0)
  if reduction == "image":
    return safe_divide(num, den)
  return safe_divide(jnp.sum(real, dtype=jnp.float32) * num, jnp.sum(den))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Task(abc.ABC):
  """One dense-prediction task.

  Attributes:
    name: batch key of the labels and model output key.
    channels: prediction channels.
    definition: ``'reference'`` metric definitions (spec §6.2 incl. Q18–Q20) or ``'standard'``
      textbook ones (global confusion-matrix mIoU over present classes, pixel-weighted means).
  """
  name: str
  channels: int
  definition: Definition = "reference"

  def __post_init__(self):
    check_choice("definition", self.definition, DEFINITIONS)
    if self.channels < 1:
      raise ValueError(f"Task {self.name!r}: channels must be positive, got {self.channels}.")

  @property
  @abc.abstractmethod
  def metrics(self) -> dict[str, bool]:
    """Metric name -> True when higher is better, in report order."""

  @abc.abstractmethod
  def valid(self, batch: Batch, hw: tuple[int, int]) -> jax.Array:
    """(B, h, w) bool: pixels the loss uses, with labels brought to ``hw`` by the nearest rule."""

  @abc.abstractmethod
  def pixel_loss(self, pred: jax.Array, batch: Batch) -> tuple[jax.Array, jax.Array]:
    """Per-pixel loss numerator and denominator weight (B, h, w), both zero on invalid pixels."""

  @abc.abstractmethod
  def metric_init(self) -> MetricState:
    """Zero metric state."""

  @abc.abstractmethod
  def metric_update(self, state: MetricState, pred: jax.Array, batch: Batch) -> MetricState:
    """Adds one batch (predictions at feature resolution) to ``state``; jit-compatible."""

  @abc.abstractmethod
  def metric_compute(self, state: MetricState) -> dict[str, float]:
    """Dataset metrics from an accumulated state (host side)."""

  def metric_samples(self, pred: jax.Array, batch: Batch) -> dict[str, tuple[jax.Array, jax.Array]]:
    """Per-pixel ``(values, keep)`` whose kept values a host state collects as :class:`Samples`.

    Jit-compatible; :meth:`metric_compute` uses them (e.g. for an exact median) when the state
    holds them under the same name. Default: none.
    """
    del pred, batch
    return {}

  @property
  def sample_names(self) -> tuple[str, ...]:
    """The state names :meth:`metric_samples` fills (their streaming fallback is then unused)."""
    return ()

  def without_fallback(self) -> "Task":
    """This task for states that carry their samples themselves (:mod:`mtajax.tasks.per_image`):
    the streaming fallback of its sampled metrics shrunk to nothing. Default: itself."""
    return self

  def check_labels(self, batch: Batch) -> None:
    """Raises a one-line ValueError for concrete labels this task cannot score. Default: none."""
    del batch

  def check_pred(self, pred: jax.Array) -> None:
    if pred.ndim != 4 or pred.shape[-1] != self.channels:
      raise ValueError(f"Task {self.name!r} expects predictions (B, h, w, {self.channels}), got "
                       f"shape {pred.shape}.")

  def loss(self, pred: jax.Array, batch: Batch, reduction: Reduction = "image") -> jax.Array:
    """Per-sample loss (B,): ``'image'`` masked means or ``'pooled'`` batch-mean contributions."""
    check_choice("reduction", reduction, REDUCTIONS)
    self.check_pred(pred)
    num, den = self.pixel_loss(pred, batch)
    return reduce_loss(num, den, reduction, batch)

  def valid_count(self, pred_shape: tuple[int, ...], batch: Batch) -> jax.Array:
    """(B,) float32 number of valid loss pixels at the prediction resolution; 0 flags an empty image."""
    return jnp.sum(self.valid(batch, (pred_shape[1], pred_shape[2])), axis=(1, 2),
                   dtype=jnp.float32)
