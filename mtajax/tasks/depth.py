"""Depth: masked L1 loss, abs/rel error and % of pixels within 1.25^k."""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp

from mtajax.tasks import base
from mtajax.tasks import l1
from mtajax.tasks.resize import resize_labels
from mtajax.tasks.resize import resize_nearest

SIGMA_THRESHOLDS = (1.25, 1.25**2, 1.25**3)
SIGMA_NAMES = ("sigma_1.25", "sigma_1.25^2", "sigma_1.25^3")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Depth(l1.L1Task):
  """Depth regression; labels (B, H, W), predictions (B, h, w, 1).

  Validity (reference rule): with ``batch[name + '_mask']``: label != 255 and mask == 1
  (Taskonomy); without: label > ``min_depth`` (NYUv2). The NYUv2 metrics also need
  label > ``min_depth`` with a mask, so that ``rel_err`` and the ratios stay finite.

  Attributes:
    metric_set: ``'nyuv2'`` -> abs_err, rel_err, sigma_1.25^k (percent); ``'taskonomy'`` -> abs_err.
    min_depth: smallest valid label without a mask.
  """
  name: str = "depth_zbuffer"
  channels: int = 1
  metric_set: Literal["nyuv2", "taskonomy"] = "nyuv2"
  min_depth: float = 3e-5

  def __post_init__(self):
    super().__post_init__()
    base.check_choice("metric_set", self.metric_set, ("nyuv2", "taskonomy"))

  @property
  def metrics(self) -> dict[str, bool]:
    if self.metric_set == "taskonomy":
      return {"abs_err": False}
    return {"abs_err": False, "rel_err": False, **{name: True for name in SIGMA_NAMES}}

  def labels(self, batch: base.Batch, hw: tuple[int, int] | None) -> tuple[jax.Array, jax.Array]:
    """Depths at ``hw`` (None: label resolution) and their validity (above ``min_depth``, or
    not 255 and inside the mask where the batch has one)."""
    g = batch[self.name].astype(jnp.float32)
    if hw is not None:
      g = resize_labels(g, hw, self.name)
    mask = base.label_mask(batch, self.name, hw)
    valid = g > self.min_depth if mask is None else (g != 255) & mask
    return g, valid

  def metric_init(self) -> base.MetricState:
    state = base.zero_mean_state("abs_err")
    if self.metric_set == "nyuv2":
      state |= base.zero_mean_state("rel_err")
      state["within"] = jnp.zeros(len(SIGMA_THRESHOLDS), jnp.int32)
    return state

  def metric_update(self, state: base.MetricState, pred: jax.Array,
                    batch: base.Batch) -> base.MetricState:
    self.check_pred(pred)
    g, valid = self.labels(batch, None)
    p = resize_nearest(pred[..., 0].astype(jnp.float32), g.shape[1:3])
    if self.metric_set == "nyuv2":
      valid &= g > self.min_depth
    valid, size = base.real_pixels(valid, batch)
    g = jnp.where(valid, g, 1)
    err = jnp.where(valid, jnp.abs(p - g), 0)
    counts = jnp.sum(valid, axis=(1, 2))
    update = base.mean_state("abs_err", jnp.sum(err, axis=(1, 2)), counts, size)
    if self.metric_set == "nyuv2":
      update |= base.mean_state("rel_err", jnp.sum(err / g, axis=(1, 2)), counts, size)
      if self.definition == "reference":
        # Q20: max(p/g, g/p); a negative p gives a negative ratio that counts as within.
        ratio = jnp.maximum(p / g, g / p)
      else:
        ratio = jnp.where(p > 0, jnp.maximum(p / g, g / jnp.where(p > 0, p, 1)), jnp.inf)
      thresholds = jnp.asarray(SIGMA_THRESHOLDS, jnp.float32)
      update["within"] = jnp.sum((ratio[..., None] <= thresholds) & valid[..., None],
                                 axis=(0, 1, 2), dtype=jnp.int32)
    return base.add_states(state, update)

  def metric_compute(self, state: base.MetricState) -> dict[str, float]:
    state = base.host_state(self.name, state)
    out = {"abs_err": base.mean_value(state, "abs_err", self.definition, self.name)}
    if self.metric_set == "nyuv2":
      out["rel_err"] = base.mean_value(state, "rel_err", self.definition, self.name)
      n = float(state["rel_err/pixel_count"])
      out |= {name: 100 * float(c) / n for name, c in zip(SIGMA_NAMES, state["within"])}
    return base.check_finite(self.name, out)
