"""Semantic segmentation: (weighted) cross-entropy with an ignore label, mIoU / Pixel Acc or err."""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
from jax.experimental import checkify
import jax.numpy as jnp
import numpy as np

from mtajax.tasks import base
from mtajax.tasks.resize import resize_labels
from mtajax.tasks.resize import resize_nearest


@dataclasses.dataclass(frozen=True, kw_only=True)
class Segmentation(base.Task):
  """Per-pixel classification; labels (B, H, W) int, ``ignore_label`` = ignore.

  Attributes:
    ignore_label: label value excluded from loss and metrics.
    class_weights: optional per-class weights of the cross-entropy (Taskonomy's semseg prior).
    metric_set: ``'nyuv2'`` -> mIoU and Pixel Acc (fractions); ``'taskonomy'`` -> ``err``, the
      class-weighted cross-entropy at label resolution.
    use_mask: also require ``batch[name + '_mask'] == 1``; the reference ignores that mask (Q23).
  """
  name: str = "segment_semantic"
  channels: int = 40
  ignore_label: int = 255
  class_weights: tuple[float, ...] | None = None
  metric_set: Literal["nyuv2", "taskonomy"] = "nyuv2"
  use_mask: bool = False

  def __post_init__(self):
    super().__post_init__()
    base.check_choice("metric_set", self.metric_set, ("nyuv2", "taskonomy"))
    if self.class_weights is not None:
      w = np.asarray(self.class_weights, np.float64)
      if w.shape != (self.channels,) or not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"class_weights must be {self.channels} finite non-negative floats, got "
                         f"{self.class_weights!r}.")
      object.__setattr__(self, "class_weights", tuple(float(v) for v in w))

  @property
  def metrics(self) -> dict[str, bool]:
    if self.metric_set == "nyuv2":
      return {"mIoU": True, "Pixel Acc": True}
    return {"err": False}

  def _out_of_range(self, y: jax.Array) -> jax.Array:
    """(B,) bool: images with a label outside [0, channels) that is not ``ignore_label``."""
    bad = (y != self.ignore_label) & ((y < 0) | (y >= self.channels))
    return jnp.any(bad, axis=tuple(range(1, y.ndim)))

  def check_labels(self, batch: base.Batch) -> None:
    """Raises a one-line ValueError if concrete labels hold a class outside the range (traced
    labels: :meth:`pixel_loss` is NaN for those images, and a ``checkify`` check fails)."""
    y = batch.get(self.name)
    if y is None or isinstance(y, jax.core.Tracer):
      return
    y = np.asarray(y).astype(np.int64)  # Concrete, also when captured by a trace.
    bad = np.unique(y[(y != self.ignore_label) & ((y < 0) | (y >= self.channels))])
    if bad.size:
      raise ValueError(f"Task {self.name!r} labels must be in [0, {self.channels}) or the ignore "
                       f"value {self.ignore_label}; got {bad[:5].tolist()}. Fix: map those "
                       f"classes into range, or to {self.ignore_label} to ignore them.")

  def labels(self, batch: base.Batch, hw: tuple[int, int] | None) -> tuple[jax.Array, jax.Array]:
    """Labels and validity (label in [0, channels), not ignored, mask if used) at ``hw``."""
    self.check_labels(batch)
    y = batch[self.name].astype(jnp.int32)
    checkify.debug_check(~jnp.any(self._out_of_range(y)),
                         f"Task {self.name!r} labels outside [0, {self.channels}) and not the "
                         f"ignore value {self.ignore_label}; their images' loss is NaN.")
    if hw is not None:
      y = resize_labels(y, hw, self.name)
    valid = (y != self.ignore_label) & (y >= 0) & (y < self.channels)
    if self.use_mask:
      mask = base.label_mask(batch, self.name, hw)
      if mask is None:
        raise ValueError(f"use_mask=True needs batch['{self.name}_mask']; add it or set "
                         f"use_mask=False.")
      valid &= mask
    return jnp.where(valid, y, 0), valid

  def weighted_nll(self, logits: jax.Array, y: jax.Array,
                   valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-pixel ``w[y] * nll`` and ``w[y]``, zero where invalid."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, y[..., None], axis=-1)[..., 0]
    w = valid.astype(jnp.float32)
    if self.class_weights is not None:
      w = w * jnp.asarray(self.class_weights, jnp.float32)[y]
    return w * nll, w

  def valid(self, batch: base.Batch, hw: tuple[int, int]) -> jax.Array:
    return self.labels(batch, hw)[1]

  def pixel_loss(self, pred: jax.Array, batch: base.Batch) -> tuple[jax.Array, jax.Array]:
    """Weighted NLL; NaN on every pixel of an image with an out-of-range label (traced labels)."""
    y, valid = self.labels(batch, pred.shape[1:3])
    num, den = self.weighted_nll(pred, y, valid)
    bad = self._out_of_range(batch[self.name].astype(jnp.int32))[:, None, None]
    # Weight 1 keeps the NaN in the image's mean when no pixel of it is valid.
    return jnp.where(bad, jnp.nan, num), jnp.where(bad, 1.0, den)

  def metric_init(self) -> base.MetricState:
    if self.metric_set == "nyuv2":
      return {"confusion": jnp.zeros((self.channels, self.channels), jnp.int32),
              **base.zero_mean_state("Pixel Acc")}
    return base.zero_mean_state("err", weighted=True)

  def metric_update(self, state: base.MetricState, pred: jax.Array,
                    batch: base.Batch) -> base.MetricState:
    self.check_pred(pred)
    y, valid = self.labels(batch, None)
    valid, size = base.real_pixels(valid, batch)
    hw = y.shape[1:3]
    if self.metric_set == "nyuv2":
      # argmax then nearest upsampling == argmax of the nearest-upsampled logits.
      p = resize_nearest(jnp.argmax(pred, axis=-1), hw)
      c = self.channels
      confusion = jnp.bincount((y * c + p).ravel(), weights=valid.ravel().astype(jnp.int32),
                               length=c * c).reshape(c, c)
      correct = jnp.sum((p == y) & valid, axis=(1, 2))
      update = {"confusion": confusion.astype(jnp.int32),
                **base.mean_state("Pixel Acc", correct, jnp.sum(valid, axis=(1, 2)), size)}
    else:
      # The reference upsamples logits before the CE; the per-pixel CE commutes with the gather.
      logits = resize_nearest(pred, hw)
      num, den = self.weighted_nll(logits, y, valid)
      update = base.mean_state("err", jnp.sum(num, axis=(1, 2)), jnp.sum(den, axis=(1, 2)),
                               size)
    return base.add_states(state, update)

  def metric_compute(self, state: base.MetricState) -> dict[str, float]:
    state = base.host_state(self.name, state)
    if self.metric_set == "taskonomy":
      return base.check_finite(self.name, {
          "err": base.mean_value(state, "err", self.definition, self.name)})
    conf = np.asarray(state["confusion"], np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    base.require_positive(union.sum(), self.name, "mIoU")
    # Reference (Q18): mean over classes with TP > 0 (0 when there is none, where it gives NaN);
    # standard: mean over classes present in labels or predictions.
    used = tp > 0 if self.definition == "reference" else union > 0
    miou = float(np.mean(tp[used] / union[used])) if used.any() else 0.0
    if self.definition == "reference":
      acc = base.mean_value(state, "Pixel Acc", "reference", self.name)
    else:
      acc = float(tp.sum() / conf.sum())
    return base.check_finite(self.name, {"mIoU": miou, "Pixel Acc": acc})
