"""Per-image metrics, per-image metric states and the per-image multi-task score (jit-compatible).

* :func:`states`: each image's own contribution to a task's streaming metric state, a pytree whose
  leaves carry a leading (B,) axis (``metric_update`` on each image alone). Summed over any set of
  images (and regrouped into batches by :func:`mtajax.worst_case.dataset_state`) it gives the
  dataset state of that set, so a worst case can mix images from different attacks.
* :func:`metrics`: the task's metrics of every image alone, (B,) each, in the task's units: mIoU and
  Pixel Acc of one image (mIoU over the image's classes by the task's ``definition``), its angle
  mean, **exact** angle median (the mean of the two middle angles, no histogram) and % within,
  its depth errors and ratios, its L1 / cross-entropy errors. An image without a valid pixel gets 0.
* :func:`score`: the per-image relative drop of every metric, with the signs of the ARP (paper
  Eq. 10), normalised by the dataset-level clean metric (one image's clean mIoU or δ ratio is often
  0): ``100 (m_b − m'_b) / M`` (higher is better) or ``100 (m'_b − m_b) / M``, averaged over a
  task's metrics (its per-task drop) and then over tasks (``s_b``). The dataset ARP is the same
  formula on dataset metrics.

Per-image metrics of a task type come from an open registry (:func:`register`).
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from mtajax.tasks import base
from mtajax.tasks import depth
from mtajax.tasks import l1
from mtajax.tasks import normal
from mtajax.tasks import segmentation
from mtajax.tasks.resize import resize_nearest

ImageMetrics = dict[str, jax.Array]
MetricFn = Callable[[base.Task, base.MetricState, jax.Array, base.Batch], ImageMetrics]

_REGISTRY: dict[type, MetricFn] = {}


def register(task_type: type, fn: MetricFn) -> None:
  """Registers ``fn(task, image_states, pred, batch) -> {metric: (B,)}`` for ``task_type``."""
  _REGISTRY[task_type] = fn


def _lookup(task: base.Task) -> MetricFn:
  for cls in type(task).__mro__:
    if cls in _REGISTRY:
      return _REGISTRY[cls]
  raise ValueError(f"task {task.name!r} ({type(task).__name__}) has no per-image metric; register "
                   "one with mtajax.tasks.per_image.register(TaskType, fn).")


def check(tasks: Sequence[base.Task]) -> None:
  """Raises a one-line ValueError for a task without a registered per-image metric."""
  for task in tasks:
    _lookup(task)


def states(task: base.Task, pred: jax.Array, batch: base.Batch) -> base.MetricState:
  """Per-image metric states: ``metric_update`` of each image alone, leaves with a leading (B,).

  A metric with per-pixel samples (the exact Angle Median) keeps them per image, (B, pixels) with
  NaN where not kept, in place of its streaming fallback (the Normal task's 1.8-million-bin
  histogram, which per image would cost 7 MB and dominate the worst-case search's sums).
  """
  light = task.without_fallback()
  zero = light.metric_init()

  def one(p, b):
    return light.metric_update(zero, p[None], jax.tree.map(lambda v: v[None], b))
  out = jax.vmap(one)(pred, dict(batch))
  for name, (values, keep) in task.metric_samples(pred, batch).items():
    out[name] = jnp.where(keep, values, jnp.nan).reshape(pred.shape[0], -1)
  return out


def metrics(task: base.Task, image_states: base.MetricState, pred: jax.Array,
            batch: base.Batch) -> ImageMetrics:
  """``{metric: (B,)}``: every metric of ``task.metrics`` on each image alone."""
  return _lookup(task)(task, image_states, pred, batch)


def _mean(s: base.MetricState, name: str) -> jax.Array:
  """A :func:`mtajax.tasks.base.mean_state` metric of one image (both definitions agree)."""
  return base.safe_divide(s[f"{name}/pixel_sum"], s[f"{name}/pixel_count"].astype(jnp.float32))


def _percent(counts: jax.Array, n: jax.Array) -> jax.Array:
  """(B, K) counts as percent of (B,) totals."""
  return 100 * base.safe_divide(counts.astype(jnp.float32), n.astype(jnp.float32)[:, None])


def _segmentation(task, s, pred, batch):
  if task.metric_set == "taskonomy":
    return {"err": _mean(s, "err")}
  conf = s["confusion"].astype(jnp.float32)  # (B, C, C)
  tp = jnp.diagonal(conf, axis1=1, axis2=2)
  union = conf.sum(1) + conf.sum(2) - tp
  used = tp > 0 if task.definition == "reference" else union > 0
  iou = jnp.where(used, base.safe_divide(tp, union), 0)
  return {"mIoU": base.safe_divide(iou.sum(1), used.sum(1).astype(jnp.float32)),
          "Pixel Acc": _mean(s, "Pixel Acc")}


def _normal(task, s, pred, batch):
  if task.metric_set == "taskonomy":
    return {"cosine_similarity": base.safe_divide(s["cos_sum"], s["count"].astype(jnp.float32))}
  g, valid = task.labels(batch, None, strict=False)
  p = base.l2_normalize(resize_nearest(pred.astype(jnp.float32), g.shape[1:3]))
  angle = jnp.degrees(jnp.arccos(jnp.clip(jnp.sum(p * g, axis=-1), -1, 1)))
  n = s["count"]
  flat = jnp.sort(jnp.where(valid, angle, jnp.inf).reshape(angle.shape[0], -1), axis=1)
  middle = jnp.stack([(n - 1) // 2, n // 2], axis=1).clip(0)
  median = jnp.where(n > 0, jnp.mean(jnp.take_along_axis(flat, middle, axis=1), axis=1), 0)
  within = _percent(s["within"], n)
  return {"Angle Mean": base.safe_divide(s["angle_sum"], n.astype(jnp.float32)),
          "Angle Median": median,
          **{f"Angle {t:g}": within[:, i] for i, t in enumerate(normal.ANGLE_THRESHOLDS)}}


def _depth(task, s, pred, batch):
  out = {"abs_err": _mean(s, "abs_err")}
  if task.metric_set == "nyuv2":
    out["rel_err"] = _mean(s, "rel_err")
    within = _percent(s["within"], s["rel_err/pixel_count"])
    out |= {name: within[:, i] for i, name in enumerate(depth.SIGMA_NAMES)}
  return out


def _masked_l1(task, s, pred, batch):
  return {task.metric_name: _mean(s, task.metric_name)}


register(segmentation.Segmentation, _segmentation)
register(normal.Normal, _normal)
register(depth.Depth, _depth)
register(l1.MaskedL1, _masked_l1)


def score(tasks: Sequence[base.Task], attacked: Mapping[str, ImageMetrics],
          clean: Mapping[str, ImageMetrics], reference: Mapping[str, Mapping[str, jax.Array]]
          ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Per-image multi-task score ``s_b`` (B,) and per-task drops ``{task: (B,)}``, in percent.

  Args:
    tasks: the tasks, each weighing equally (as in the ARP).
    attacked: per-image metrics of the attacked images.
    clean: per-image metrics of the same images clean.
    reference: dataset-level clean metrics ``{task: {metric: M}}`` (non-zero) normalising the drops.
  """
  drops = {}
  for task in tasks:
    rels = []
    for metric, higher_is_better in task.metrics.items():
      diff = clean[task.name][metric] - attacked[task.name][metric]
      rels.append(100 * (diff if higher_is_better else -diff) / reference[task.name][metric])
    drops[task.name] = sum(rels) / len(rels)
  return sum(drops.values()) / len(drops), drops
