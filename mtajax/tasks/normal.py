"""Surface normals: cosine loss on L2-normalised vectors, angle or cosine metrics."""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from mtajax.tasks import base
from mtajax.tasks.resize import resize_labels
from mtajax.tasks.resize import resize_nearest

ANGLE_THRESHOLDS = (11.25, 22.5, 30.0)
LabelEncoding = Literal["uint8", "uint8_decoded", "unit"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Normal(base.Task):
  """Surface-normal prediction; labels (B, H, W, 3), a pixel with a channel at 255 is invalid.

  Predictions and labels are L2-normalised per pixel before comparing (the loss is
  ``1 - cosine``), so labels only need the right direction.

  Attributes:
    label_encoding: ``'uint8'``: raw 0-255 values normalised as they are (the reference's NYUv2
      labels, spec Q26); ``'uint8_decoded'``: raw 0-255 values mapped to ``2v/255 - 1`` first;
      ``'unit'``: vectors in [-1, 1] (Taskonomy, synthetic). ``'uint8'`` and ``'unit'`` use the same
      arithmetic.
    metric_set: ``'nyuv2'`` -> angle mean / median (degrees) and % within 11.25/22.5/30 degrees;
      ``'taskonomy'`` -> ``cosine_similarity``.
    histogram_bins: bins over [0, 180] degrees of the median's histogram; from it the median is
      exact to half a bin plus the float32 rounding of the bin index (under 6e-5 degrees for the
      default 1.8 million bins of 1e-4 degrees).

  The Angle Median is exact (``np.median`` of all valid pixels' angles, the reference's definition)
  when the state holds the angles as :class:`base.Samples` under ``'angle_samples'``
  (:class:`mtajax.tasks.metrics.Accumulator`, within its sample budget); otherwise it comes from
  the histogram.
  """
  name: str = "normal"
  channels: int = 3
  label_encoding: LabelEncoding = "uint8"
  metric_set: Literal["nyuv2", "taskonomy"] = "nyuv2"
  histogram_bins: int = 1_800_000

  def __post_init__(self):
    super().__post_init__()
    base.check_choice("label_encoding", self.label_encoding, ("uint8", "uint8_decoded", "unit"))
    base.check_choice("metric_set", self.metric_set, ("nyuv2", "taskonomy"))
    if self.histogram_bins < 1:
      raise ValueError(f"histogram_bins must be positive, got {self.histogram_bins}.")

  @property
  def metrics(self) -> dict[str, bool]:
    if self.metric_set == "nyuv2":
      return {"Angle Mean": False, "Angle Median": False,
              **{f"Angle {t:g}": True for t in ANGLE_THRESHOLDS}}
    return {"cosine_similarity": True}

  def labels(self, batch: base.Batch, hw: tuple[int, int] | None,
             strict: bool) -> tuple[jax.Array, jax.Array]:
    """Unit label vectors and validity at ``hw``: loss ``max < 255`` (strict), metrics ``max != 255``."""
    g = batch[self.name].astype(jnp.float32)
    if hw is not None:
      g = resize_labels(g, hw, self.name)
    top = jnp.max(g, axis=-1)
    valid = top < 255 if strict else top != 255
    mask = base.label_mask(batch, self.name, hw)
    if mask is not None:
      valid &= mask
    if self.label_encoding == "uint8_decoded":
      g = g * (2 / 255) - 1
    return base.l2_normalize(g), valid

  def valid(self, batch: base.Batch, hw: tuple[int, int]) -> jax.Array:
    return self.labels(batch, hw, strict=True)[1]

  def pixel_loss(self, pred: jax.Array, batch: base.Batch) -> tuple[jax.Array, jax.Array]:
    g, valid = self.labels(batch, pred.shape[1:3], strict=True)
    cos = jnp.sum(base.l2_normalize(pred.astype(jnp.float32)) * g, axis=-1)
    v = valid.astype(jnp.float32)
    return (1 - cos) * v, v

  def metric_init(self) -> base.MetricState:
    if self.metric_set == "taskonomy":
      return {"cos_sum": jnp.zeros((), jnp.float32), "count": jnp.zeros((), jnp.int32)}
    return {"angle_sum": jnp.zeros((), jnp.float32), "count": jnp.zeros((), jnp.int32),
            "within": jnp.zeros(len(ANGLE_THRESHOLDS), jnp.int32),
            "histogram": jnp.zeros(self.histogram_bins, jnp.int32)}

  def _cosines(self, pred: jax.Array, batch: base.Batch) -> tuple[jax.Array, jax.Array]:
    """Per-pixel clipped cosines at label resolution and the metrics' validity (real examples)."""
    self.check_pred(pred)
    g, valid = self.labels(batch, None, strict=False)
    p = base.l2_normalize(resize_nearest(pred.astype(jnp.float32), g.shape[1:3]))
    return jnp.clip(jnp.sum(p * g, axis=-1), -1, 1), base.real_pixels(valid, batch)[0]

  @property
  def sample_names(self) -> tuple[str, ...]:
    return () if self.metric_set == "taskonomy" else ("angle_samples",)

  def without_fallback(self) -> "Normal":
    return dataclasses.replace(self, histogram_bins=1)

  def metric_samples(self, pred: jax.Array,
                     batch: base.Batch) -> dict[str, tuple[jax.Array, jax.Array]]:
    if self.metric_set == "taskonomy":
      return {}
    cos, valid = self._cosines(pred, batch)
    return {"angle_samples": (jnp.degrees(jnp.arccos(cos)), valid)}

  def metric_update(self, state: base.MetricState, pred: jax.Array,
                    batch: base.Batch) -> base.MetricState:
    cos, valid = self._cosines(pred, batch)
    update = {"count": jnp.sum(valid, dtype=jnp.int32)}
    if self.metric_set == "taskonomy":
      update["cos_sum"] = jnp.sum(jnp.where(valid, cos, 0))
    else:
      angle = jnp.degrees(jnp.arccos(cos))
      update["angle_sum"] = jnp.sum(jnp.where(valid, angle, 0))
      thresholds = jnp.asarray(ANGLE_THRESHOLDS, jnp.float32)
      update["within"] = jnp.sum((angle[..., None] <= thresholds) & valid[..., None],
                                 axis=(0, 1, 2), dtype=jnp.int32)
      bins = jnp.clip(jnp.floor(angle * (self.histogram_bins / 180)).astype(jnp.int32), 0,
                      self.histogram_bins - 1)
      update["histogram"] = jnp.bincount(bins.ravel(), weights=valid.ravel().astype(jnp.int32),
                                         length=self.histogram_bins).astype(jnp.int32)
    return base.add_states(state, update)

  def metric_compute(self, state: base.MetricState) -> dict[str, float]:
    state = base.host_state(self.name, state)
    n = base.require_positive(state["count"], self.name, next(iter(self.metrics)))
    if self.metric_set == "taskonomy":
      return base.check_finite(self.name, {"cosine_similarity": float(state["cos_sum"]) / n})
    return base.check_finite(self.name, {
        "Angle Mean": float(state["angle_sum"]) / n, "Angle Median": self._median(state),
        **{f"Angle {t:g}": 100 * float(c) / n for t, c in zip(ANGLE_THRESHOLDS, state["within"])}})

  def _median(self, state: base.MetricState) -> float:
    """Exact median of the collected angles, else the histogram's (half-bin midpoints)."""
    samples = state.get("angle_samples")
    values = None if samples is None else samples.values()
    if values is not None:
      return float(np.median(values))
    n = int(state["count"])
    cumulative = np.cumsum(state["histogram"], dtype=np.int64)
    middle = np.searchsorted(cumulative, [(n - 1) // 2, n // 2], side="right")
    return float(np.mean((middle + 0.5) * (180 / self.histogram_bins)))
