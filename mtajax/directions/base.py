"""The attack-direction interface: per-task gradients, the Direction base class and the registry.

Every direction works on a user loss function ``loss_fn(x, labels) -> {task: (B,) losses}`` closed
over any JAX model. ``labels`` may be any pytree (put the model state in it to keep weights traced
rather than baked into the compiled attack). All directions differentiate *batch means* of the
per-sample losses, exactly like the reference (its gradients carry the 1/B factor, spec §4 / Q17).
``per_task_grads`` gives the T per-task gradients from one forward pass (used by ``sign_total``,
the balancing directions, Auto-SAGE and diagnostics).
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


def batch_means(losses: Mapping[str, Array]) -> Array:
  """Stacks the batch means of per-sample task losses into a (T,) vector."""
  return jnp.stack([jnp.mean(v) for v in losses.values()])


def _checked(losses: Losses) -> Losses:
  for name, v in losses.items():
    if v.ndim != 1:
      raise ValueError(f"loss_fn must return per-sample losses of shape (B,); task {name!r} has "
                       f"shape {v.shape}. Fix: reduce over pixels only, not over the batch.")
  return losses


def value_and_grad(objective: Callable[[Losses], Array], loss_fn: LossFn, x: Array,
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
    return batch_means(losses), losses
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


def per_sample(v: Array, x: Array) -> Array:
  """Broadcasts a (B,) vector against a (B, ...) array (anything else is returned as is)."""
  v = jnp.asarray(v)
  return v.reshape(v.shape + (1,) * (x.ndim - 1)) if v.ndim == 1 else v


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




_REGISTRY: dict[str, Callable[..., Direction]] = {}
_SINGLE: list[Callable[[str], Direction]] = []  # single_<task>'s factory (directions.plain)


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


def register_single(factory: Callable[[str], Direction]) -> None:
  """Makes ``by_name('single_<task>')`` return ``factory(task)`` (set once by the package)."""
  _SINGLE[:] = [factory]


def registered() -> tuple[str, ...]:
  """The registered direction names (``single_<task>`` is always available too)."""
  return tuple(_REGISTRY)


def by_name(name: str, **options: Any) -> Direction:
  """The direction called ``name``: a registered name or ``'single_<task>'``."""
  if name.startswith("single_") and _SINGLE:
    return _SINGLE[0](name[len("single_"):])
  if name not in _REGISTRY:
    raise ValueError(f"unknown direction {name!r}; use one of {', '.join(_REGISTRY)}, "
                     "single_<task>, or directions.register() your own.")
  return _REGISTRY[name](**options)
