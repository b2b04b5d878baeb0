"""Attack directions: how per-task losses become one ascent direction (reference-spec §4).

Every direction works on a user loss function ``loss_fn(x, labels) -> {task: (B,) losses}`` closed
over any JAX model. ``labels`` may be any pytree (put the model state in it to keep weights traced
rather than baked into the compiled attack). All directions differentiate *batch means* of the
per-sample losses, exactly like the reference (its gradients carry the 1/B factor, spec §4 / Q17):

==============  ==============================================  =========================
direction       D(x)                                            reference loss reduction
==============  ==============================================  =========================
``single(t)``   ∇ mean_b L_t,b                                  ``'pooled'`` (Base)
``total()``     ∇ Σ_t mean_b L_t,b                              ``'pooled'`` (Base)
``sign_total()``Σ_t sign(∇ mean_b L_t,b)  (per-sample vote)     ``'image'`` (MTL)
``gbmta()``     Σ_t ∇ mean_b log L_t,b = Σ_t (1/B) ∇L_t,b/L_t,b ``'image'`` (MTL)
==============  ==============================================  =========================

GB-MTA is computed with ONE backward pass through the log trick; terms whose loss is not finite or
not above ``min_loss`` (a task already at zero loss, say) get weight 0 instead of producing inf/NaN
(a NaN loss usually comes with NaN gradients that no shared backward pass can separate; the attacks
leave input elements with a NaN direction unmoved and report the NaN loss in their diagnostics).
``per_task_grads`` gives the T per-task gradients from one forward pass (used by ``sign_total``,
Auto-SAGE and diagnostics). Each direction also defines the APGD objective it ascends (spec §5.3).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, Literal, Mapping

import jax
import jax.numpy as jnp

Array = jax.Array
Losses = dict[str, Array]
LossFn = Callable[[Array, Any], Losses]
GradMethod = Literal["loop", "vmap"]


def _batch_means(losses: Mapping[str, Array]) -> Array:
  """Stacks the batch means of per-sample task losses into a (T,) vector."""
  return jnp.stack([jnp.mean(v) for v in losses.values()])


def _checked(losses: Losses) -> Losses:
  for name, v in losses.items():
    if v.ndim != 1:
      raise ValueError(f"loss_fn must return per-sample losses of shape (B,); task {name!r} has "
                       f"shape {v.shape}. Fix: reduce over pixels only, not over the batch.")
  return losses


def _value_and_grad(objective: Callable[[Losses], Array], loss_fn: LossFn, x: Array,
                    labels: Any) -> tuple[Array, Losses]:
  """∇_x objective(loss_fn(x)) and the losses, keeping the loss function's task order.

  (JAX returns dict outputs with sorted keys; task order matters, e.g. for Auto-SAGE's Q1 mode.)
  """
  names = []

  def f(x_):
    losses = _checked(loss_fn(x_, labels))
    names[:] = list(losses)
    return objective(losses), losses
  grad, losses = jax.grad(f, has_aux=True)(x)
  return grad, {n: losses[n] for n in names}


def task_names(loss_fn: LossFn, x: Array, labels: Any) -> list[str]:
  """The task names of ``loss_fn`` in its own order (evaluated abstractly, no FLOPs)."""
  names = []
  jax.eval_shape(lambda x_: names.extend(_checked(loss_fn(x_, labels))), x)
  return names


def per_task_grads(loss_fn: LossFn, x: Array, labels: Any, method: GradMethod = "loop"
                   ) -> tuple[Array, Losses]:
  """Per-task input gradients ∇_x mean_b L_t,b, stacked to (T, *x.shape), from one forward pass.

  ``method='loop'`` pulls back one cotangent per task through a single ``jax.vjp`` (T backward
  passes, as the reference does with ``retain_graph``); ``'vmap'`` vmaps the pullback over the T
  one-hot cotangents. Returns the gradients and the per-sample losses at ``x``.
  """
  names = []

  def f(x_):
    losses = _checked(loss_fn(x_, labels))
    names[:] = list(losses)
    return _batch_means(losses), losses
  means, pullback, losses = jax.vjp(f, x, has_aux=True)
  losses = {n: losses[n] for n in names}
  eye = jnp.eye(means.shape[0], dtype=means.dtype)
  if method == "vmap":
    grads = jax.vmap(lambda c: pullback(c)[0])(eye)
  elif method == "loop":
    grads = jnp.stack([pullback(eye[t])[0] for t in range(means.shape[0])])
  else:
    raise ValueError(f"unknown per-task gradient method {method!r}; use 'loop' or 'vmap'.")
  return grads, losses


def _per_sample(w: Array, x: Array) -> Array:
  """Broadcasts a (B,) vector against a (B, ...) array."""
  return w.reshape(w.shape + (1,) * (x.ndim - 1))


@dataclasses.dataclass(frozen=True)
class Direction(abc.ABC):
  """Base class: a named rule turning ``loss_fn`` at ``x`` into an ascent direction.

  A direction is a frozen (hashable) object; subclass it, or write any object with these methods,
  and :func:`register` it to use it by name in configs, records and reports.
  """

  reduction = "image"  # Loss reduction the reference pairs with this direction (spec §5.5).
  sums_task_grads = False  # D == Σ_t task_grads(...)[t] (what Auto-SAGE reweights).

  @property
  @abc.abstractmethod
  def name(self) -> str:
    """Name used in configs and result records."""

  @abc.abstractmethod
  def __call__(self, loss_fn: LossFn, x: Array, labels: Any) -> tuple[Array, Losses]:
    """Returns the direction (shape of ``x``) and the per-sample task losses at ``x``."""

  def init(self, loss_fn: LossFn, x0: Array, labels: Any, losses0: Losses) -> Any:
    """Start-of-attack state (a pytree) passed to :meth:`objective`; ``losses0`` are the losses
    at the attack's start point. None by default."""
    del loss_fn, x0, labels, losses0
    return None

  def losses(self, loss_fn: LossFn, x: Array, labels: Any) -> Losses:
    """The per-sample task losses at ``x`` as :meth:`__call__` returns them (no gradient)."""
    return loss_fn(x, labels)

  def objective(self, losses: Losses, state: Any = None) -> Array:
    """Per-sample objective (B,) whose batch mean is the reference's APGD objective F."""
    return sum(losses.values())

  def descend(self, loss: Array) -> Array:
    """A quantity that grows as ``loss`` falls (targeted attacks ascend it); an involution."""
    return -loss

  def task_grads(self, loss_fn: LossFn, x: Array, labels: Any) -> tuple[Array, Losses]:
    """The per-task gradients this direction combines, (T, *x.shape), and the losses at ``x``."""
    return per_task_grads(loss_fn, x, labels)

  def tasks(self, losses: Losses) -> list[str]:
    """The tasks this direction attacks, in loss order."""
    return list(losses)


@dataclasses.dataclass(frozen=True)
class Single(Direction):
  """Single-x: the gradient of one task's loss."""
  task: str
  reduction = "pooled"

  @property
  def name(self) -> str:
    return f"single_{self.task}"

  def __call__(self, loss_fn, x, labels):
    def objective(losses):
      if self.task not in losses:
        raise ValueError(f"unknown task {self.task!r} for Single; the loss function returns "
                         f"{list(losses)}.")
      return jnp.mean(losses[self.task])
    return _value_and_grad(objective, loss_fn, x, labels)

  def objective(self, losses, state=None):
    return losses[self.task]

  def tasks(self, losses):
    return [self.task]


@dataclasses.dataclass(frozen=True)
class Total(Direction):
  """Total: the gradient of the sum of all task losses."""
  reduction = "pooled"
  sums_task_grads = True

  @property
  def name(self) -> str:
    return "total"

  def __call__(self, loss_fn, x, labels):
    return _value_and_grad(lambda losses: jnp.sum(_batch_means(losses)), loss_fn, x, labels)


@dataclasses.dataclass(frozen=True)
class SignTotal(Direction):
  """SignTotal: per element, the sum over tasks of the sign of each task's gradient (a vote)."""
  method: GradMethod = "loop"

  @property
  def name(self) -> str:
    return "sign_total"

  def __call__(self, loss_fn, x, labels):
    grads, losses = per_task_grads(loss_fn, x, labels, self.method)
    return jnp.sum(jnp.sign(grads), axis=0), losses


@dataclasses.dataclass(frozen=True)
class GBMTA(Direction):
  """GB-MTA: Σ_t ∇L_t / L_t per sample at the current iterate, in one backward pass.

  Attributes:
    min_loss: a term is used only where its loss is finite and > ``min_loss``; other terms
      (a task at exactly zero loss, a non-finite loss) get weight 0 instead of inf/NaN.
    method: ``'log'`` (one backward via ∇ log L = ∇L / L) or ``'per_task'`` (T backward passes,
      the reference's way; identical up to float rounding).
  """
  min_loss: float = 0.0
  method: Literal["log", "per_task"] = "log"
  sums_task_grads = True

  @property
  def name(self) -> str:
    return "gbmta"

  def _usable(self, v: Array) -> Array:
    return jnp.isfinite(v) & (v > self.min_loss)

  def task_grads(self, loss_fn, x, labels):
    """Per-task gradients divided per sample by the current loss: (1/B)·∇L_t,b / L_t,b."""
    grads, losses = per_task_grads(loss_fn, x, labels)
    stacked = jax.lax.stop_gradient(jnp.stack(list(losses.values())))  # (T, B)
    ok = self._usable(stacked)
    weights = jnp.where(ok, 1.0 / jnp.where(ok, stacked, 1.0), 0.0)
    ok, weights = jax.vmap(_per_sample)(ok, grads), jax.vmap(_per_sample)(weights, grads)
    return jnp.where(ok, weights * grads, 0.0), losses

  def __call__(self, loss_fn, x, labels):
    if self.method == "per_task":
      grads, losses = self.task_grads(loss_fn, x, labels)
      return jnp.sum(grads, axis=0), losses
    if self.method != "log":
      raise ValueError(f"unknown GB-MTA method {self.method!r}; use 'log' or 'per_task'.")

    def objective(losses):
      total = 0.0
      for v in losses.values():
        ok = self._usable(jax.lax.stop_gradient(v))
        total += jnp.mean(jnp.where(ok, jnp.log(jnp.where(ok, v, 1.0)), 0.0))
      return total
    return _value_and_grad(objective, loss_fn, x, labels)

  def init(self, loss_fn, x0, labels, losses0):
    """The baselines c_t: the losses at the start point (paper Algorithm 3), as constants."""
    return {t: jax.lax.stop_gradient(v) for t, v in losses0.items()}

  def objective(self, losses, baselines=None):
    """Σ_t (L_t − c_t) / c_t over the usable terms.

    A term counts where its baseline c_t and its loss L_t are finite and c_t > ``min_loss``
    (the direction's own rule); a task with a zero clean loss (an image without a valid pixel)
    gets weight 0 instead of making the objective (0 − 0)/0 = NaN.
    """
    if baselines is None:
      raise ValueError("the GB-MTA objective needs per-task baseline losses c_t; pass "
                       "baselines={task: clean loss} (the attacks default to the clean loss at x0).")
    total = 0
    for t, v in losses.items():
      c = jnp.asarray(baselines[t], v.dtype)
      ok = self._usable(c)
      c = jnp.where(ok, c, 1.0)
      total = total + (jnp.where(ok & jnp.isfinite(v), v, c) - c) / c  # 0 for unusable terms.
    return total

  def descend(self, loss):
    """1/L: GB-MTA's Σ_t ∇ log(1/L_t) then descends the balanced sum of log target losses."""
    ok = self._usable(loss)
    return jnp.where(ok, 1.0 / jnp.where(ok, loss, 1.0), 0.0)


def single(task: str) -> Single:
  """Single-x direction for ``task``."""
  return Single(task)


def total() -> Total:
  """Total direction."""
  return Total()


def sign_total(method: GradMethod = "loop") -> SignTotal:
  """SignTotal direction."""
  return SignTotal(method)


def gbmta(min_loss: float = 0.0, method: Literal["log", "per_task"] = "log") -> GBMTA:
  """GB-MTA (DGBA) direction."""
  return GBMTA(min_loss, method)


_REGISTRY: dict[str, Callable[..., Direction]] = {}


def register(name: str, factory: Callable[..., Direction]) -> None:
  """Makes ``by_name(name, **options)`` return ``factory(**options)`` (configs, records, report).

  Re-registering a name replaces its factory; ``single_<task>`` is reserved.
  """
  if not name or name.startswith("single_") or name == "single":
    raise ValueError(f"cannot register a direction named {name!r}; single_<task> is built in. "
                     "Pick another name.")
  if not callable(factory):
    raise ValueError(f"the factory of direction {name!r} must be callable; got {factory!r}.")
  _REGISTRY[name] = factory


def registered() -> tuple[str, ...]:
  """The registered direction names (``single_<task>`` is always available too)."""
  return tuple(_REGISTRY)


def by_name(name: str, **options: Any) -> Direction:
  """The direction called ``name``: a registered name or ``'single_<task>'``."""
  if name.startswith("single_"):
    return single(name[len("single_"):])
  if name not in _REGISTRY:
    raise ValueError(f"unknown direction {name!r}; use one of {', '.join(_REGISTRY)}, "
                     "single_<task>, or directions.register() your own.")
  return _REGISTRY[name](**options)


register("total", total)
register("sign_total", sign_total)
register("gbmta", gbmta)


# The gradient-balancing directions (mgda, pcgrad, imtl_g, cagrad, nash_mtl) register themselves.
from mtajax import balancing as _balancing  # noqa: E402,F401  pylint: disable=wrong-import-position
