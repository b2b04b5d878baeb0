"""Surface normals: cosine loss on L2-normalised vectors, angle or cosine metrics."""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from mtajax.tasks import base
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
    histogram_bins: bins over [0, 180] degrees for the dataset median; the median is exact to
      half a bin (0.005 degrees for the default 18000).
  """
  name: str = "normal"
  channels: int = 3
  label_encoding: LabelEncoding = "uint8"
  metric_set: Literal["nyuv2", "taskonomy"] = "nyuv2"
  histogram_bins: int = 18000

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

  def _labels(self, batch: base.Batch, hw: tuple[int, int] | None,
              strict: bool) -> tuple[jax.Array, jax.Array]:
    """Unit label vectors and validity at ``hw``: loss ``max < 255`` (strict), metrics ``max != 255``."""
    g = batch[self.name].astype(jnp.float32)
    if hw is not None:
      g = resize_nearest(g, hw)
    top = jnp.max(g, axis=-1)
    valid = top < 255 if strict else top != 255
    mask = base.label_mask(batch, self.name, hw)
    if mask is not None:
      valid &= mask
    if self.label_encoding == "uint8_decoded":
      g = g * (2 / 255) - 1
    return base.l2_normalize(g), valid

  def valid(self, batch: base.Batch, hw: tuple[int, int]) -> jax.Array:
    return self._labels(batch, hw, strict=True)[1]

  def pixel_loss(self, pred: jax.Array, batch: base.Batch) -> tuple[jax.Array, jax.Array]:
    g, valid = self._labels(batch, pred.shape[1:3], strict=True)
    cos = jnp.sum(base.l2_normalize(pred.astype(jnp.float32)) * g, axis=-1)
    v = valid.astype(jnp.float32)
    return (1 - cos) * v, v

  def metric_init(self) -> base.MetricState:
    if self.metric_set == "taskonomy":
      return {"cos_sum": jnp.zeros((), jnp.float32), "count": jnp.zeros((), jnp.int32)}
    return {"angle_sum": jnp.zeros((), jnp.float32), "count": jnp.zeros((), jnp.int32),
            "within": jnp.zeros(len(ANGLE_THRESHOLDS), jnp.int32),
            "histogram": jnp.zeros(self.histogram_bins, jnp.int32)}

  def metric_update(self, state: base.MetricState, pred: jax.Array,
                    batch: base.Batch) -> base.MetricState:
    self.check_pred(pred)
    g, valid = self._labels(batch, None, strict=False)
    p = base.l2_normalize(resize_nearest(pred.astype(jnp.float32), g.shape[1:3]))
    cos = jnp.clip(jnp.sum(p * g, axis=-1), -1, 1)
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
    return jax.tree.map(jnp.add, state, update)

  def metric_compute(self, state: base.MetricState) -> dict[str, float]:
    state = jax.device_get(state)
    n = base.require_positive(state["count"], self.name, next(iter(self.metrics)))
    if self.metric_set == "taskonomy":
      return base.check_finite(self.name, {"cosine_similarity": float(state["cos_sum"]) / n})
    cumulative = np.cumsum(state["histogram"], dtype=np.int64)
    middle = np.searchsorted(cumulative, [(int(n) - 1) // 2, int(n) // 2], side="right")
    width = 180 / self.histogram_bins
    return base.check_finite(self.name, {
        "Angle Mean": float(state["angle_sum"]) / n,
            "Angle Median": float(np.mean((middle + 0.5) * width)),
            **{f"Angle {t:g}": 100 * float(c) / n
               for t, c in zip(ANGLE_THRESHOLDS, state["within"])}})
