"""Attack losses: per-pixel losses an attack may ascend instead of the training loss.

An attack loss is ``fn(task, pred, batch, context) -> (num, den)``, the per-pixel numerator and
denominator weight (B, h, w), zero on invalid pixels, reduced per image exactly like
:meth:`Task.pixel_loss` (``'image'``: Σnum/Σden per image). ``context`` is the attack's
``Context(step, num_steps, clean)`` (``clean``: the clean predictions ``{task: (B, h, w, C)}``) or
None outside an attack. Per-pixel weights are constants (stop-gradient), as in the papers' code.

============  ==================  ==========================================================
name          tasks               per-pixel loss
============  ==================  ==========================================================
``default``   all                 the task's own ``pixel_loss`` (the training loss)
``segpgd``    segmentation¹       SegPGD (arXiv 2207.12391): CE·((1−λ)·[correct] + λ·[wrong]),
                                  λ = step / (2·num_steps) (the paper's (t−1)/2T, t = step+1)
``cospgd``    all                 CosPGD (arXiv 2302.02213): loss × a weight in [0, 1] that is 1
                                  where the pixel is still right: segmentation softmax(p)_y/‖softmax
                                  (p)‖₂; normals (1 + cos(p, g))/2; scalar maps ē/(ē + |p − g|),
                                  ē the image's mean |p − g| (a scalar's cosine is ±1)
``masked_ce`` segmentation¹       SEA (arXiv 2306.12941): CE on still-correct pixels only
``js``        segmentation¹       Jensen-Shannon divergence of softmax(p) to the clean softmax
``js_label``  segmentation¹       SEA's JS divergence of softmax(p) to the one-hot label
============  ==================  ==========================================================

¹ On other tasks these use the task's own loss (``default``), so one name serves a multi-task
model: ``segpgd`` on a segmentation + normals + depth net is SegPGD on the segmentation head and
the training loss on the others. ``cospgd`` covers every built-in task type; a task type a loss
cannot handle gets a one-line error naming the supported ones.

Denominators are the task's own (valid pixels × class weight), so a weighted or masked loss keeps
the scale of the plain one. Register more with :func:`register`.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from mtajax.tasks import base
from mtajax.tasks.l1 import L1Task
from mtajax.tasks.normal import Normal
from mtajax.tasks.segmentation import Segmentation

PixelLoss = tuple[jax.Array, jax.Array]
AttackLoss = Callable[[base.Task, jax.Array, base.Batch, Any], PixelLoss]
DEFAULT = "default"

_REGISTRY: dict[str, AttackLoss] = {}
_sg = jax.lax.stop_gradient


def register(name: str, fn: AttackLoss) -> None:
  """Makes ``make_loss_fn(..., attack_loss=name)`` use ``fn`` (re-registering replaces it)."""
  if not callable(fn):
    raise ValueError(f"attack loss {name!r} must be callable; got {fn!r}.")
  _REGISTRY[name] = fn


def get(name: str) -> AttackLoss:
  """The attack loss called ``name``."""
  if name not in _REGISTRY:
    raise ValueError(f"unknown attack loss {name!r}; use one of {', '.join(_REGISTRY)} or "
                     "mtajax.tasks.attack_losses.register() your own.")
  return _REGISTRY[name]


def names() -> tuple[str, ...]:
  """Registered attack-loss names."""
  return tuple(_REGISTRY)


def _require(name: str, task: base.Task, *types: type) -> None:
  if not isinstance(task, types):
    supported = ", ".join(t.__name__ for t in types)
    raise ValueError(f"attack loss {name!r} supports {supported} tasks, not {task.name!r} "
                     f"({type(task).__name__}); use attack_loss='default' or 'cospgd' for it.")


def _clean(name: str, task: base.Task, context: Any) -> jax.Array:
  if context is None or context.clean is None or task.name not in context.clean:
    raise ValueError(f"attack loss {name!r} needs the clean predictions of {task.name!r}; call the "
                     "loss with context=attacks.Context(..., clean=predict(x0)) (LossFn does).")
  return _sg(context.clean[task.name]).astype(jnp.float32)


def _segmentation(task: Segmentation, pred: jax.Array, batch: base.Batch):
  """Labels, log-softmax, class-weighted CE numerator and the denominator weight."""
  y, valid = task.labels(batch, pred.shape[1:3])
  num, den = task.weighted_nll(pred, y, valid)
  return y, jax.nn.log_softmax(pred.astype(jnp.float32), axis=-1), num, den


def _correct(logp: jax.Array, y: jax.Array) -> jax.Array:
  return (jnp.argmax(logp, axis=-1) == y).astype(jnp.float32)


def default(task: base.Task, pred: jax.Array, batch: base.Batch, context: Any) -> PixelLoss:
  """The task's own pixel loss."""
  del context
  return task.pixel_loss(pred, batch)


def segpgd(task: base.Task, pred: jax.Array, batch: base.Batch, context: Any) -> PixelLoss:
  """SegPGD: CE weighted 1−λ on correct and λ on wrong pixels; λ = 0 without a context."""
  if not isinstance(task, Segmentation):
    return task.pixel_loss(pred, batch)
  y, logp, num, den = _segmentation(task, pred, batch)
  lam = 0.0 if context is None else context.step / (2.0 * context.num_steps)
  correct = _sg(_correct(logp, y))
  return num * ((1 - lam) * correct + lam * (1 - correct)), den


def masked_ce(task: base.Task, pred: jax.Array, batch: base.Batch, context: Any) -> PixelLoss:
  """SEA's masked CE: only pixels the model still classifies correctly."""
  del context
  if not isinstance(task, Segmentation):
    return task.pixel_loss(pred, batch)
  y, logp, num, den = _segmentation(task, pred, batch)
  return num * _sg(_correct(logp, y)), den


def _js(p: jax.Array, q: jax.Array) -> jax.Array:
  """Per-pixel JS divergence of distributions along the last axis (0 log 0 = 0)."""
  m = 0.5 * (p + q)
  safe_m = jnp.where(m > 0, m, 1.0)
  kl = lambda a: jnp.sum(jnp.where(a > 0, a * (jnp.log(jnp.where(a > 0, a, 1.0)) -
                                               jnp.log(safe_m)), 0.0), axis=-1)
  return 0.5 * (kl(p) + kl(q))


def js(task: base.Task, pred: jax.Array, batch: base.Batch, context: Any) -> PixelLoss:
  """JS divergence of the softmax to the clean prediction's softmax (class weights on den)."""
  if not isinstance(task, Segmentation):
    return task.pixel_loss(pred, batch)
  _, logp, _, den = _segmentation(task, pred, batch)
  clean = jax.nn.softmax(_clean("js", task, context), axis=-1)
  return den * _js(jnp.exp(logp), clean), den


def js_label(task: base.Task, pred: jax.Array, batch: base.Batch, context: Any) -> PixelLoss:
  """SEA's JS divergence of the softmax to the one-hot label."""
  del context
  if not isinstance(task, Segmentation):
    return task.pixel_loss(pred, batch)
  y, logp, _, den = _segmentation(task, pred, batch)
  return den * _js(jnp.exp(logp), jax.nn.one_hot(y, task.channels)), den


def cospgd(task: base.Task, pred: jax.Array, batch: base.Batch, context: Any) -> PixelLoss:
  """CosPGD's per-pixel weighting of the task's own loss (see the module table)."""
  del context
  _require("cospgd", task, Segmentation, Normal, L1Task)
  p = pred.astype(jnp.float32)
  num, den = task.pixel_loss(pred, batch)
  if isinstance(task, Segmentation):
    y, _ = task.labels(batch, pred.shape[1:3])
    soft = jax.nn.softmax(p, axis=-1)
    w = jnp.take_along_axis(soft, y[..., None], axis=-1)[..., 0] / jnp.linalg.norm(soft, axis=-1)
  elif isinstance(task, Normal):
    w = 1 - 0.5 * base.safe_divide(num, den)  # the loss is 1 − cos on valid pixels
  else:
    err = base.safe_divide(num, den)
    mean = base.safe_divide(jnp.sum(num, axis=(1, 2)), jnp.sum(den, axis=(1, 2)))[:, None, None]
    w = jnp.where(mean > 0, mean / jnp.where(mean > 0, mean + err, 1.0), 1.0)
  return num * _sg(w), den


for _name, _fn in [(DEFAULT, default), ("segpgd", segpgd), ("cospgd", cospgd),
                   ("masked_ce", masked_ce), ("js", js), ("js_label", js_label)]:
  register(_name, _fn)
