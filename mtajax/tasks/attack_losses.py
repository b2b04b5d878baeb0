"""Attack losses: per-pixel losses an attack may ascend instead of the training loss.

An attack loss is ``fn(task, pred, batch, context) -> (num, den)``, the per-pixel numerator and
denominator weight (B, h, w), zero on invalid pixels, reduced per image exactly like
:meth:`Task.pixel_loss` (``'image'``: Σnum/Σden per image). ``context`` is the attack's
``Context(step, num_steps, clean)`` (``clean``: the clean predictions ``{task: (B, h, w, C)}``) or
None outside an attack. Per-pixel weights are constants (stop-gradient), as in the papers' code.

A pixel is *right* by its task's own success criteria (:func:`success`, the fraction c ∈ [0, 1] of
the task's thresholds it still meets): segmentation argmax = label; depth δ = max(p/g, g/p) ≤ 1.25,
1.25², 1.25³ (p > 0); normals angle ≤ 11.25°, 22.5°, 30°; other L1 maps (keypoints, edges)
|p − g| ≤ (1.25^k − 1)·ḡ, ḡ the image's mean |g| (depth's δ with the image's label scale).

==============  ===========  ==================================================================
name            tasks        per-pixel loss
==============  ===========  ==================================================================
``default``     all          the task's own ``pixel_loss`` (the training loss)
``segpgd``      all          SegPGD (arXiv 2207.12391): loss·((1−λ)·c + λ·(1−c)), λ = step /
                             (2·num_steps) (the paper's (t−1)/2T, t = step+1); segmentation: CE
``masked_ce``   all          SEA (arXiv 2306.12941): loss·c, only the pixels still right
                             (segmentation: CE on correctly classified pixels)
``cospgd``      all          CosPGD (arXiv 2302.02213): loss × a weight in [0, 1] that is 1
                             where the pixel is still right: segmentation softmax(p)_y/‖softmax
                             (p)‖₂; normals (1 + cos(p, g))/2; scalar maps ē/(ē + |p − g|),
                             ē the image's mean |p − g| (a scalar's cosine is ±1)
``js``          all          distance to the clean prediction: segmentation the Jensen-Shannon
                             divergence of the softmaxes; others the task's loss with the clean
                             prediction as label (1 − cos, |p − p₀|)¹
``kl``          all          TRADES's consistency to the clean prediction (:func:`consistency`):
                             segmentation KL(softmax(p₀) ‖ softmax(p)); others as ``js``¹
``js_label``    all          SEA's JS divergence of softmax(p) to the one-hot label; on other
                             tasks the distance to the label is the task's own loss
``relative``    regression   scale-free: depth |log p − log g| (= log δ; p, g floored at
                             max(min_depth, 1e-6)); normals the angle (radians); other L1 maps
                             |p − g|/(|g| + ḡ) (|p − g| where |g| + ḡ = 0)
``js_relative`` all          ``js`` on segmentation, ``relative`` on the regression heads
==============  ===========  ==================================================================

¹ Smooth distances (segmentation, normals) have a zero gradient at the clean input: start the
attack at a random point (``random_start=True``) or pair them with another task's loss.

Every built-in loss handles :class:`Segmentation`, :class:`Normal` and :class:`L1Task` (depth,
keypoints, edges) except ``relative`` on segmentation (cross-entropy is a log-ratio already); a
task a loss does not fit gets a one-line error naming the losses that fit it. ``make_loss_fn(...,
attack_loss={task: name})`` gives each task its own loss (:func:`canonical`).

Denominators are the task's own (valid pixels × class weight), so a weighted or masked loss keeps
the scale of the plain one. Register more with :func:`register`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from mtajax.tasks import base
from mtajax.tasks import depth as depth_lib
from mtajax.tasks import normal as normal_lib
from mtajax.tasks.l1 import L1Task
from mtajax.tasks.normal import Normal
from mtajax.tasks.segmentation import Segmentation

PixelLoss = tuple[jax.Array, jax.Array]
AttackLoss = Callable[[base.Task, jax.Array, base.Batch, Any], PixelLoss]
PerTask = tuple[tuple[str, str], ...]
DEFAULT = "default"
# Losses whose meaning changed since records were first keyed by their name: segpgd, masked_ce and
# js also attack regression heads (by each task's success criteria) since revision 2.
REVISIONS = {"segpgd": 2, "masked_ce": 2, "js": 2}


def key_name(name: str) -> str:
  """``name`` as stored records' keys carry it: with its revision where its meaning changed, so a
  re-run never reuses a record of the loss's earlier meaning."""
  return f"{name}@{REVISIONS[name]}" if name in REVISIONS else name
ALL_TYPES = (Segmentation, Normal, L1Task)
REGRESSION_TYPES = (Normal, L1Task)
LOG_FLOOR = 1e-6  # the smallest depth ``relative`` takes the log of (with ``min_depth``)

_REGISTRY: dict[str, AttackLoss] = {}
_TYPES: dict[str, tuple[type, ...]] = {}  # built-in losses: the task types each one fits
_STEPLESS: set[str] = set()  # losses registered with reads_steps=False (built-in: all but segpgd)
_sg = jax.lax.stop_gradient


def register(name: str, fn: AttackLoss, *, reads_steps: bool = True) -> None:
  """Makes ``make_loss_fn(..., attack_loss=name)`` use ``fn`` (re-registering replaces it).

  ``reads_steps=False`` declares that ``fn`` never reads ``context.num_steps`` (it gets None):
  attacks that differ only in their step count then share one compiled program.
  """
  if not callable(fn):
    raise ValueError(f"attack loss {name!r} must be callable; got {fn!r}.")
  _REGISTRY[name] = fn
  _TYPES.pop(name, None)
  _STEPLESS.discard(name)
  if not reads_steps:
    _STEPLESS.add(name)


def reads_steps(attack_loss: str | PerTask) -> bool:
  """Whether a :func:`canonical` ``attack_loss`` reads the attack's step count (one of its losses
  was registered without ``reads_steps=False``)."""
  names = [attack_loss] if isinstance(attack_loss, str) else [n for _, n in attack_loss]
  return any(n not in _STEPLESS for n in names)


def get(name: str) -> AttackLoss:
  """The attack loss called ``name``."""
  if not isinstance(name, str) or name not in _REGISTRY:
    raise ValueError(f"unknown attack loss {name!r}; use one of {', '.join(_REGISTRY)} or "
                     "mtajax.tasks.attack_losses.register() your own.")
  return _REGISTRY[name]


def names() -> tuple[str, ...]:
  """Registered attack-loss names."""
  return tuple(_REGISTRY)


def fitting(task: base.Task) -> tuple[str, ...]:
  """The registered losses known to fit ``task``'s type (``default`` and own ones always)."""
  return tuple(n for n in _REGISTRY if n not in _TYPES or isinstance(task, _TYPES[n]))


def canonical(attack_loss: str | Mapping[str, str] | PerTask,
              task_names: Sequence[str]) -> str | PerTask:
  """A loss name, or per-task names ``{task: name}`` as hashable ``((task, name), ...)`` pairs.

  Tasks a mapping does not name use ``default``; the pairs keep only the other tasks, in
  ``task_names`` order, and a mapping that names only ``default`` is ``'default'``.
  """
  if isinstance(attack_loss, str):
    get(attack_loss)
    return attack_loss
  try:
    per_task = dict(attack_loss)
  except (TypeError, ValueError):
    raise ValueError(f"attack_loss must be a name or a dict {{task: name}}, got {attack_loss!r}; "
                     f"use one of {', '.join(_REGISTRY)}.") from None
  unknown = sorted(set(per_task) - set(task_names))
  if unknown:
    raise ValueError(f"attack_loss names unknown tasks {unknown}; the tasks are "
                     f"{list(task_names)}.")
  for name in per_task.values():
    get(name)
  pairs = tuple((t, per_task[t]) for t in task_names if per_task.get(t, DEFAULT) != DEFAULT)
  return pairs if pairs else DEFAULT


def check(attack_loss: str | PerTask, tasks: Sequence[base.Task]) -> None:
  """Raises :func:`_require`'s one-line error unless every task's loss is known to fit its type
  (before an evaluation spends anything on the tasks that do fit)."""
  for task in tasks:
    name = for_task(attack_loss, task.name)
    if name not in fitting(task):
      _require(name, task, *_TYPES[name])


def for_task(attack_loss: str | PerTask, task_name: str) -> str:
  """The loss name a :func:`canonical` ``attack_loss`` gives task ``task_name``."""
  return attack_loss if isinstance(attack_loss, str) else dict(attack_loss).get(task_name, DEFAULT)


def label(attack_loss: str | PerTask) -> str:
  """A short name of a :func:`canonical` ``attack_loss``: ``segpgd``, ``normal=js+depth=relative``."""
  if isinstance(attack_loss, str):
    return attack_loss
  return "+".join(f"{t}={n}" for t, n in attack_loss)


def _require(name: str, task: base.Task, *types: type) -> None:
  """Raises a one-line error naming the losses that fit ``task`` unless it is one of ``types``."""
  if not isinstance(task, types):
    supported = ", ".join(t.__name__ for t in types)
    what = "success()" if name == "success" else f"attack loss {name!r}"
    raise ValueError(f"{what} supports {supported} tasks, not {task.name!r} "
                     f"({type(task).__name__}); for it use one of {', '.join(fitting(task))}, "
                     f"e.g. attack_loss={{{task.name!r}: 'default', ...}}.")


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


def _image_mean(values: jax.Array, valid: jax.Array) -> jax.Array:
  """(B, 1, 1) mean of ``values`` over each image's valid pixels (0 without one)."""
  v = valid.astype(jnp.float32)
  return base.safe_divide(jnp.sum(values * v, axis=(1, 2)), jnp.sum(v, axis=(1, 2)))[:, None, None]


def _fraction(hits: list[jax.Array]) -> jax.Array:
  return sum(h.astype(jnp.float32) for h in hits) / len(hits)


def success(task: base.Task, pred: jax.Array, batch: base.Batch) -> jax.Array:
  """(B, h, w) fraction of the task's success thresholds each pixel meets (module doc), constant.

  Invalid pixels get any value (their loss is zero).
  """
  _require("success", task, *ALL_TYPES)
  p = pred.astype(jnp.float32)
  if isinstance(task, Segmentation):
    y, _ = task.labels(batch, pred.shape[1:3])
    return _sg(_correct(p, y))
  if isinstance(task, Normal):
    g, _ = task.labels(batch, pred.shape[1:3], strict=True)
    cos = jnp.sum(base.l2_normalize(p) * g, axis=-1)
    return _sg(_fraction([cos >= math.cos(math.radians(t)) for t in normal_lib.ANGLE_THRESHOLDS]))
  g, valid = task.labels(batch, pred.shape[1:3])
  p = p[..., 0]
  if isinstance(task, depth_lib.Depth):  # max(p/g, g/p) <= t  <=>  p <= t·g and g <= t·p
    return _sg(_fraction([(p <= t * g) & (g <= t * p) for t in depth_lib.SIGMA_THRESHOLDS]))
  scale = _image_mean(jnp.abs(g), valid)
  return _sg(_fraction([jnp.abs(p - g) <= (t - 1) * scale for t in depth_lib.SIGMA_THRESHOLDS]))


def default(task: base.Task, pred: jax.Array, batch: base.Batch, context: Any) -> PixelLoss:
  """The task's own pixel loss."""
  del context
  return task.pixel_loss(pred, batch)


def segpgd(task: base.Task, pred: jax.Array, batch: base.Batch, context: Any) -> PixelLoss:
  """SegPGD: the loss weighted 1−λ on right and λ on wrong pixels; λ = 0 without a context."""
  _require("segpgd", task, *ALL_TYPES)
  lam = 0.0 if context is None else context.step / (2.0 * context.num_steps)
  if isinstance(task, Segmentation):
    y, logp, num, den = _segmentation(task, pred, batch)
    correct = _sg(_correct(logp, y))
  else:
    (num, den), correct = task.pixel_loss(pred, batch), success(task, pred, batch)
  return num * ((1 - lam) * correct + lam * (1 - correct)), den


def masked_ce(task: base.Task, pred: jax.Array, batch: base.Batch, context: Any) -> PixelLoss:
  """SEA's masked loss: only pixels the model still gets right (weighted by :func:`success`)."""
  del context
  _require("masked_ce", task, *ALL_TYPES)
  if isinstance(task, Segmentation):
    y, logp, num, den = _segmentation(task, pred, batch)
    return num * _sg(_correct(logp, y)), den
  num, den = task.pixel_loss(pred, batch)
  return num * success(task, pred, batch), den


def _js(p: jax.Array, q: jax.Array) -> jax.Array:
  """Per-pixel JS divergence of distributions along the last axis (0 log 0 = 0)."""
  m = 0.5 * (p + q)
  safe_m = jnp.where(m > 0, m, 1.0)
  kl = lambda a: jnp.sum(jnp.where(a > 0, a * (jnp.log(jnp.where(a > 0, a, 1.0)) -
                                               jnp.log(safe_m)), 0.0), axis=-1)
  return 0.5 * (kl(p) + kl(q))


def js(task: base.Task, pred: jax.Array, batch: base.Batch, context: Any) -> PixelLoss:
  """Distance to the clean prediction: JS of the softmaxes, else the task's loss to it."""
  _require("js", task, *ALL_TYPES)
  clean = _clean("js", task, context)
  if isinstance(task, Segmentation):
    _, logp, _, den = _segmentation(task, pred, batch)
    return den * _js(jnp.exp(logp), jax.nn.softmax(clean, axis=-1)), den
  _, den = task.pixel_loss(pred, batch)
  p = pred.astype(jnp.float32)
  if isinstance(task, Normal):
    dist = 1 - jnp.sum(base.l2_normalize(p) * base.l2_normalize(clean), axis=-1)
  else:
    dist = jnp.abs(p[..., 0] - clean[..., 0])
  return den * dist, den


def consistency(task: base.Task, pred: jax.Array, clean: jax.Array, batch: base.Batch
                ) -> PixelLoss:
  """TRADES's per-pixel distance of ``pred`` to the prediction ``clean`` (gradients reach both):
  segmentation KL(softmax(clean) ‖ softmax(pred)), normals 1 − cos, other L1 maps |p − p₀|;
  weighted by the task loss's denominator (its valid pixels and class weights)."""
  _require("kl", task, *ALL_TYPES)
  _, den = task.pixel_loss(pred, batch)
  p, q = pred.astype(jnp.float32), clean.astype(jnp.float32)
  if isinstance(task, Segmentation):
    log_q = jax.nn.log_softmax(q, axis=-1)
    dist = jnp.sum(jnp.exp(log_q) * (log_q - jax.nn.log_softmax(p, axis=-1)), axis=-1)
  elif isinstance(task, Normal):
    dist = 1 - jnp.sum(base.l2_normalize(p) * base.l2_normalize(q), axis=-1)
  else:
    dist = jnp.abs(p[..., 0] - q[..., 0])
  return den * dist, den


def kl(task: base.Task, pred: jax.Array, batch: base.Batch, context: Any) -> PixelLoss:
  """:func:`consistency` to the attack's clean prediction (a constant)."""
  return consistency(task, pred, _clean("kl", task, context), batch)


def js_label(task: base.Task, pred: jax.Array, batch: base.Batch, context: Any) -> PixelLoss:
  """SEA's JS divergence of the softmax to the one-hot label; the task's loss on regression."""
  del context
  _require("js_label", task, *ALL_TYPES)
  if not isinstance(task, Segmentation):
    return task.pixel_loss(pred, batch)
  y, logp, _, den = _segmentation(task, pred, batch)
  return den * _js(jnp.exp(logp), jax.nn.one_hot(y, task.channels)), den


def _angle(p: jax.Array, g: jax.Array) -> jax.Array:
  """Angle (radians) between p and unit g along the last axis; finite gradients at 0 and π."""
  p = base.l2_normalize(p)
  cross = jnp.cross(p, g)
  sin = jnp.sqrt(jnp.maximum(jnp.sum(cross * cross, axis=-1), 1e-24))
  return jnp.arctan2(sin, jnp.sum(p * g, axis=-1))


def relative(task: base.Task, pred: jax.Array, batch: base.Batch, context: Any) -> PixelLoss:
  """A scale-free error: log-ratio (depth), angle (normals), error / label scale (L1 maps)."""
  del context
  _require("relative", task, *REGRESSION_TYPES)
  _, den = task.pixel_loss(pred, batch)
  p = pred.astype(jnp.float32)
  if isinstance(task, Normal):
    g, _ = task.labels(batch, pred.shape[1:3], strict=True)
    return den * _angle(p, g), den
  g, valid = task.labels(batch, pred.shape[1:3])
  p = p[..., 0]
  if isinstance(task, depth_lib.Depth):
    floor = max(task.min_depth, LOG_FLOOR)
    return den * jnp.abs(jnp.log(jnp.maximum(p, floor)) - jnp.log(jnp.maximum(g, floor))), den
  scale = jnp.abs(g) + _image_mean(jnp.abs(g), valid)
  return den * jnp.abs(p - g) / jnp.where(scale > 0, scale, 1.0), den


def cospgd(task: base.Task, pred: jax.Array, batch: base.Batch, context: Any) -> PixelLoss:
  """CosPGD's per-pixel weighting of the task's own loss (see the module table)."""
  del context
  _require("cospgd", task, *ALL_TYPES)
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


def js_relative(task: base.Task, pred: jax.Array, batch: base.Batch, context: Any) -> PixelLoss:
  """``js`` on segmentation, ``relative`` on the regression heads (one member of a suite that
  gives every task type its strongest measured loss, whatever the task set)."""
  _require("js_relative", task, *ALL_TYPES)
  fn = js if isinstance(task, Segmentation) else relative
  return fn(task, pred, batch, context)


for _name, _fn, _types in [
    (DEFAULT, default, None), ("segpgd", segpgd, ALL_TYPES), ("cospgd", cospgd, ALL_TYPES),
    ("masked_ce", masked_ce, ALL_TYPES), ("js", js, ALL_TYPES), ("kl", kl, ALL_TYPES),
    ("js_label", js_label, ALL_TYPES),
    ("relative", relative, REGRESSION_TYPES), ("js_relative", js_relative, ALL_TYPES)]:
  register(_name, _fn, reads_steps=_name == "segpgd")
  if _types is not None:
    _TYPES[_name] = _types
