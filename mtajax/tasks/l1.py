"""Masked L1 regression tasks scored by one mean absolute error (Taskonomy keypoints2d, edges)."""

from __future__ import annotations

import abc
import dataclasses

import jax
import jax.numpy as jnp

from mtajax.tasks import base
from mtajax.tasks.resize import resize_labels
from mtajax.tasks.resize import resize_nearest


@dataclasses.dataclass(frozen=True, kw_only=True)
class L1Task(base.Task):
  """A single-channel task with an L1 pixel loss over the pixels its ``labels`` rule marks valid."""

  @abc.abstractmethod
  def labels(self, batch: base.Batch, hw: tuple[int, int] | None) -> tuple[jax.Array, jax.Array]:
    """Labels at ``hw`` (None: label resolution) and their validity."""

  def valid(self, batch: base.Batch, hw: tuple[int, int]) -> jax.Array:
    return self.labels(batch, hw)[1]

  def pixel_loss(self, pred: jax.Array, batch: base.Batch) -> tuple[jax.Array, jax.Array]:
    g, valid = self.labels(batch, pred.shape[1:3])
    v = valid.astype(jnp.float32)
    return jnp.abs(pred[..., 0].astype(jnp.float32) - g) * v, v


@dataclasses.dataclass(frozen=True, kw_only=True)
class MaskedL1(L1Task):
  """Dense regression with L1 loss; labels (B, H, W), 255 = invalid, plus an optional mask.

  Attributes:
    metric_name: name of the error metric (``key_err``, ``edge_err``): mean |p - g| over valid
      pixels, batch-size-weighted per batch (reference) or pixel-weighted (standard).
  """
  name: str = "keypoints2d"
  channels: int = 1
  metric_name: str = "key_err"

  @property
  def metrics(self) -> dict[str, bool]:
    return {self.metric_name: False}

  def labels(self, batch: base.Batch, hw: tuple[int, int] | None) -> tuple[jax.Array, jax.Array]:
    g = batch[self.name].astype(jnp.float32)
    if hw is not None:
      g = resize_labels(g, hw, self.name)
    valid = g != 255
    mask = base.label_mask(batch, self.name, hw)
    return g, valid if mask is None else valid & mask

  def metric_init(self) -> base.MetricState:
    return base.zero_mean_state(self.metric_name)

  def metric_update(self, state: base.MetricState, pred: jax.Array,
                    batch: base.Batch) -> base.MetricState:
    self.check_pred(pred)
    g, valid = self.labels(batch, None)
    valid, size = base.real_pixels(valid, batch)
    p = resize_nearest(pred[..., 0].astype(jnp.float32), g.shape[1:3])
    err = jnp.where(valid, jnp.abs(p - g), 0)
    update = base.mean_state(self.metric_name, jnp.sum(err, axis=(1, 2)),
                             jnp.sum(valid, axis=(1, 2)), size)
    return base.add_states(state, update)

  def metric_compute(self, state: base.MetricState) -> dict[str, float]:
    return base.check_finite(self.name, {self.metric_name: base.mean_value(
        base.host_state(self.name, state), self.metric_name, self.definition, self.name)})
