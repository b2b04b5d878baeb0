"""What every attack shares: the result type, the loss's context, threat-model steps, starts, best
points, input checks and the compile-once wrapper.

An attack is a step rule (its own module) × a start (:func:`start`: none, uniform in the ball,
AutoAttack's, or a given point) × a threat model (:mod:`mtajax.attacks.threat`, intersected with
the input box) × a direction (:mod:`mtajax.directions`).
"""

from __future__ import annotations

import dataclasses
import functools
import weakref
from typing import Any, Callable, Literal, Mapping, NamedTuple

import jax
from jax.experimental import checkify
import jax.numpy as jnp
import numpy as np

from mtajax import host_loop
from mtajax import platform
from mtajax.attacks import threat as threat_lib

Array = jax.Array
Bounds = tuple[Any, Any]
Start = Literal["none", "uniform", "autoattack", "given"]
LINF = threat_lib.Linf()


class AttackResult(NamedTuple):
  """What every attack returns.

  Attributes:
    x_adv: the adversarial batch, same shape as the input.
    objective: (steps, B) the direction's per-sample objective at each evaluated iterate. For the
      reference-default APGD (``per_sample=False``) every column holds the BATCH objective (the
      mean over images, spec Q7) that its decisions use, broadcast to the B images.
    losses: ``{task: (steps, B)}`` per-sample task losses at the same iterates (under ``targets``:
      each targeted task's loss against its target).
    best_step: (B,) int32, the iterate each returned image is: 0 = the start point, k = after k
      steps (the last iterate for attacks that return it).
    step_size: (num_steps, B) the step size each image took from iterate k (APGD's schedule;
      constant for FGSM, PGD and Auto-SAGE).
  """
  x_adv: Array
  objective: Array
  losses: dict[str, Array]
  best_step: Array
  step_size: Array


class Context(NamedTuple):
  """What an attack loss may see besides ``(x, labels)``.

  Attributes:
    step: int32 scalar, the iteration 0..num_steps−1 (traced; from the attack loop).
    num_steps: the attack's number of iterations (static).
    clean: the loss's start-of-attack data, ``loss_fn.init_context(x0, labels)`` (for
      :func:`mtajax.tasks.make_loss_fn` losses: the clean predictions at x0).
  """
  step: Array
  num_steps: int
  clean: Any


def takes_context(loss_fn: Callable[..., Any]) -> bool:
  """Whether ``loss_fn`` wants an attack :class:`Context` (``loss_fn.takes_context``)."""
  return bool(getattr(loss_fn, "takes_context", False))


def clean_context(loss_fn, x0: Array, labels: Any) -> Any:
  """The loss's start-of-attack data (None for plain ``loss_fn(x, labels)`` functions)."""
  if not takes_context(loss_fn):
    return None
  return jax.lax.stop_gradient(loss_fn.init_context(x0, labels))


def bind(loss_fn, step: Any, num_steps: int, clean: Any):
  """``loss_fn`` as a plain ``(x, labels) -> losses`` function at iteration ``step``."""
  if not takes_context(loss_fn):
    return loss_fn
  return functools.partial(loss_fn, context=Context(jnp.asarray(step, jnp.int32), num_steps, clean))


def targeted(loss_fn, targets: Mapping[str, Array] | None, direction, keep_untargeted: bool):
  """The loss an attack with ``targets`` ascends.

  Each targeted task's loss is computed against its target map (``labels[task]`` replaced) and
  turned by ``direction.descend`` into a quantity that grows as that loss falls (−L, or 1/L for
  GB-MTA, whose balanced sum of log losses then descends Σ_t log L_t); tasks without a target are
  dropped, or kept as untargeted tasks with ``keep_untargeted``.
  """
  if targets is None:
    return loss_fn

  def fn(x, labels):
    losses = loss_fn(x, {**labels, **targets})
    return {t: direction.descend(v) if t in targets else v for t, v in losses.items()
            if t in targets or keep_untargeted}
  return fn


def losses_per_step(loss_fn, x0: Array, labels: Any, num_steps: int,
                    targets: Mapping[str, Array] | None, direction, keep_untargeted: bool
                    ) -> Callable[[Any], Callable[[Array, Any], dict[str, Array]]]:
  """``k -> (x, labels) -> losses``: the loss an attack ascends at iteration k (context bound,
  targets applied)."""
  clean = clean_context(loss_fn, x0, labels)

  def loss_at(k):
    return targeted(bind(loss_fn, k, num_steps, clean), targets, direction, keep_untargeted)
  return loss_at


# loss function -> {(kind, id(direction)): (direction, shared call)}: an entry lives as long as its
# loss function (the calls read it through a weak reference) — for the evaluations' loss functions,
# which close over a model's traced weights, one attack's trace.
_SHARED_CALLS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _shared(kind: str, fn: Callable[..., Any], direction, loss_fn) -> Callable[..., Any]:
  """``(x, labels) -> fn(direction, loss_fn, x, labels)`` as a :func:`mtajax.host_loop.shared`
  call, one per (kind, direction, loss function): JAX traces it once for all the call sites of an
  attack (APGD's start point and loop step), not once per site."""
  try:
    calls = _SHARED_CALLS.setdefault(loss_fn, {})
  except TypeError:  # A loss function that cannot be weakly referenced or hashed: no reuse.
    return host_loop.shared(lambda x_, labels_: fn(direction, loss_fn, x_, labels_), kind)
  key = (kind, id(direction))
  if key not in calls:
    ref = weakref.ref(loss_fn)
    calls[key] = (direction, host_loop.shared(
        lambda x_, labels_: fn(direction, ref(), x_, labels_), kind))
  return calls[key][1]


def _direction_losses(direction, loss_fn, x: Array, labels: Any) -> dict[str, Array]:
  fn = getattr(direction, "losses", None)  # Direction objects written without it: the plain losses.
  return loss_fn(x, labels) if fn is None else fn(loss_fn, x, labels)


def ascent(direction, loss_fn, x: Array, labels: Any, unroll: Any = None
           ) -> tuple[Array, dict[str, Array]]:
  """``direction(loss_fn, x, labels)``; with host loops (``unroll='host'``) as a
  :func:`mtajax.host_loop.shared` program, compiled once for every place that evaluates the same
  direction of the same model (the start point and the loop step, PGD and APGD)."""
  if unroll != host_loop.HOST:
    return direction(loss_fn, x, labels)
  return _shared("ascent", lambda d, f, x_, labels_: d(f, x_, labels_), direction, loss_fn)(
      x, labels)


def losses(direction, loss_fn, x: Array, labels: Any, unroll: Any = None) -> dict[str, Array]:
  """The losses ``direction`` reads at ``x`` without a gradient (``direction.losses``); with host
  loops a :func:`mtajax.host_loop.shared` program, like :func:`ascent`."""
  if unroll != host_loop.HOST:
    return _direction_losses(direction, loss_fn, x, labels)
  return _shared("losses", _direction_losses, direction, loss_fn)(x, labels)


def reported(losses: dict[str, Array], targets, direction) -> dict[str, Array]:
  """Diagnostics in loss units: ``descend`` is an involution, so it maps targeted terms back."""
  if targets is None:
    return losses
  return {t: direction.descend(v) if t in targets else v for t, v in losses.items()}


def detached(losses: dict[str, Array]) -> dict[str, Array]:
  """Per-task losses as constants."""
  return {t: jax.lax.stop_gradient(v) for t, v in losses.items()}


def clip(x: Array, bounds: Bounds) -> Array:
  """Per-channel clamp to the valid input box (channels last)."""
  low, high = bounds
  return jnp.clip(x, jnp.asarray(low, x.dtype), jnp.asarray(high, x.dtype))


def project(x: Array, x0: Array, eps: Array) -> Array:
  """L∞ projection onto the ε-ball around ``x0`` (reference ``proj``; see ``threat.Linf``)."""
  return LINF.project(x, x0, eps)


def safe_sign(d: Array) -> Array:
  """sign(d) with sign(0) = 0 and sign(NaN) = 0."""
  return LINF.unit(d)


def step(x: Array, x0: Array, direction: Array, step_size: Array, eps: Array, bounds: Bounds,
         threat: threat_lib.ThreatModel = LINF) -> Array:
  """One step and the projections: clip(proj(x + a·unit(D))) (L∞: unit = sign).

  Elements where D is NaN (a loss with a NaN gradient) do not move; the NaN stays visible in the
  attack's loss diagnostics instead of spreading into the adversarial batch.
  """
  a = threat_lib.per_sample(step_size, x)
  return clip(threat.project(x + a * threat.unit(direction), x0, eps), bounds)


def per_sample(mask: Array, x: Array) -> Array:
  """Broadcasts a (B,) vector against a (B, ...) array."""
  return mask.reshape(mask.shape + (1,) * (x.ndim - 1))


def random_start(key: Array, x0: Array, eps: Array, bounds: Bounds,
                 threat: threat_lib.ThreatModel = LINF) -> Array:
  """Uniform start in the ε-ball, clamped to the box."""
  return clip(threat.uniform_start(key, x0, eps), bounds)


def start(kind: Start, key: Array | None, x0: Array, eps: Array, bounds: Bounds,
          threat: threat_lib.ThreatModel, x_init: Array | None) -> Array:
  """The first iterate: x0, uniform in the ball, AutoAttack's start, or ``x_init`` projected."""
  if kind == "none":
    return x0
  if kind == "uniform":
    return random_start(key, x0, eps, bounds, threat)
  if kind == "autoattack":
    return clip(threat.autoattack_start(key, x0, eps), bounds)
  return clip(threat.project(x_init, x0, eps), bounds)


def start_kind(random_start_: bool, x_init: Array | None, default: Start = "uniform") -> Start:
  """Which :func:`start` an attack's ``random_start`` / ``x_init`` arguments select."""
  if x_init is not None:
    return "given"
  return default if random_start_ else "none"


def improve(f: Array, f_best: Array, strict: Any = True) -> tuple[Array, Array]:
  """NaN-safe best-point update: (better, new best); a NaN objective never counts as better."""
  f = jnp.where(jnp.isnan(f), -jnp.inf, f)
  better = jnp.where(strict, f > f_best, f >= f_best)
  return better, jnp.where(better, f, f_best)


def batch_objective(f: Array, example_weight: Array | None) -> Array:
  """Mean over the batch's real (weight > 0) images with a finite objective, broadcast to (B,).

  (An image with a NaN objective would otherwise make the batch objective NaN and stop every
  best-point update of the reference's batch-level APGD.)
  """
  ok = jnp.isfinite(f)
  if example_weight is None:
    mean = jnp.where(jnp.all(ok), jnp.mean(f),
                     jnp.sum(jnp.where(ok, f, 0.0)) / jnp.sum(ok).astype(f.dtype))
  else:
    w = jnp.where(ok, jnp.asarray(example_weight, f.dtype), 0.0)
    mean = jnp.sum(w * jnp.where(ok, f, 0.0)) / jnp.sum(w)
  return jnp.broadcast_to(mean, f.shape)


def resolve_unroll(unroll: bool | int | str | None) -> bool | int:
  """The ``lax.scan`` unroll: ``None`` picks the measured per-platform default (see
  :func:`mtajax.platform.default_unroll`); ``'host'`` (:mod:`mtajax.host_loop`: the loop runs from
  the host, one compiled step) leaves the scan rolled for wherever it cannot be split."""
  if isinstance(unroll, str):
    if unroll != host_loop.HOST:
      raise ValueError(f"unroll must be a bool, an int >= 1, None or {host_loop.HOST!r}; got "
                       f"{unroll!r}.")
    return 1
  return platform.default_unroll() if unroll is None else unroll


# ------------------------------------------------------------------------------------------------
# Compile once: a loss function or direction is split into its static structure (compared by value,
# functions by identity) and its arrays (traced), so rebuilding ``make_loss_fn(partial(predict,
# state), ...)`` per batch reuses the compiled attack and keeps the weights traced.

@dataclasses.dataclass(frozen=True)
class _ById:
  """An unhashable static value, compared by identity."""
  value: Any

  def __hash__(self):
    return id(self.value)

  def __eq__(self, other):
    return isinstance(other, _ById) and other.value is self.value


@dataclasses.dataclass(frozen=True)
class _Static:
  treedef: Any
  leaves: tuple[Any, ...]  # None where an array leaf goes.


def _is_array(v: Any) -> bool:
  return isinstance(v, (jax.Array, np.ndarray))


def _hashable(v: Any) -> Any:
  try:
    hash(v)
    return v
  except TypeError:
    return _ById(v)


def split(obj: Any) -> tuple[_Static, list[Array]]:
  """(static structure, array leaves) of a callable; ``functools.partial`` counts as a pytree."""
  if isinstance(obj, functools.partial) and not isinstance(obj, jax.tree_util.Partial):
    obj = jax.tree_util.Partial(obj.func, *obj.args, **obj.keywords)
  leaves, treedef = jax.tree.flatten(obj)
  static = tuple(None if _is_array(v) else _hashable(v) for v in leaves)
  return _Static(treedef, static), [v for v in leaves if _is_array(v)]


def merge(static: _Static, arrays: list[Array]) -> Any:
  """Inverse of :func:`split`."""
  it = iter(arrays)
  leaves = [next(it) if v is None else (v.value if isinstance(v, _ById) else v)
            for v in static.leaves]
  return jax.tree.unflatten(static.treedef, leaves)


def _attack(loss_arrays, dir_arrays, args, *, impl, loss_static, dir_static, options):
  result = impl(merge(loss_static, loss_arrays), merge(dir_static, dir_arrays), **args,
                **{k: v for k, _, v in options})
  x = args["x0"] if "x0" in args else args["x"]
  return nan_where_invalid(result, invalid_images(x, args["eps"], args["bounds"],
                                                  args.get("step_size")))


_STATIC = ("impl", "loss_static", "dir_static", "options")
_compiled = jax.jit(_attack, static_argnames=_STATIC)
_hosted = host_loop.jit(_attack, static_argnames=_STATIC)


def run(impl: Callable[..., AttackResult], loss_fn, direction, args: dict[str, Any],
        **options: Any) -> AttackResult:
  """Calls ``impl(loss_fn, direction, **args, **options)`` jit-compiled.

  ``args`` are traced (arrays, pytrees, None); ``options`` are static (hashable). The compiled
  program is reused whenever the loss function's and direction's static structure and the options
  are equal, whatever their arrays hold. With ``unroll='host'`` (outside a trace) the attack's loop
  runs from the host over one compiled step (:mod:`mtajax.host_loop`). ``args`` name the clean
  batch ``x0`` (or ``x``), ``eps``, ``bounds`` and optionally ``step_size``: images that
  :func:`invalid_images` flags come back NaN (:func:`nan_where_invalid`).
  """
  check_labels = getattr(loss_fn, "check_labels", None)  # e.g. a LossFn's label range checks.
  if check_labels is not None and _is_concrete(args["labels"]):
    check_labels(args["labels"])
  loss_static, loss_arrays = split(loss_fn)
  dir_static, dir_arrays = split(direction)
  hosted = options.get("unroll") == host_loop.HOST and not any(
      isinstance(v, jax.core.Tracer) for v in jax.tree.leaves((loss_arrays, dir_arrays, args)))
  return (_hosted if hosted else _compiled)(
      loss_arrays, dir_arrays, args, impl=impl, loss_static=loss_static, dir_static=dir_static,
      # Typed, so that unroll=True and unroll=1 (equal in Python) are two programs.
      options=tuple((k, type(v), v) for k, v in sorted(options.items())))


def _is_concrete(*values: Any) -> bool:
  """Whether no leaf of ``values`` is a tracer (values captured by a trace are concrete)."""
  return not any(isinstance(v, jax.core.Tracer) for v in jax.tree.leaves(values))


def check_inputs(x: Array, eps: Any, bounds: Bounds, *, step_size: Any = None,
                 random_start_: bool = False, key: Array | None = None, norm: str = "linf",
                 labels: Any = None, targets: Mapping[str, Any] | None = None,
                 x_init: Array | None = None) -> threat_lib.ThreatModel:
  """Validates attack inputs; raises a one-line ValueError naming the problem and the fix.

  Value checks (finite input inside the box, ε ≥ 0, step > 0, low ≤ high without NaN) run on
  every concrete value, also one captured inside the caller's ``jit``; traced values are left to
  :func:`invalid_images` (the attack's result is NaN for them). Returns the threat model of ``norm``.
  """
  threat = threat_lib.by_name(norm)
  if x.ndim < 2:
    raise ValueError(f"x must be a batch (B, ...); got shape {x.shape}.")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"x must be floating point; got {x.dtype}. Fix: x.astype(jnp.float32).")
  low, high = bounds
  for name, b in (("low", low), ("high", high)):
    shape = np.shape(b)
    if shape not in ((), (x.shape[-1],)):
      raise ValueError(f"bounds {name} must be a scalar or one value per channel "
                       f"({x.shape[-1]},); got shape {shape}.")
  if np.shape(eps) not in ((), (x.shape[0],)):
    raise ValueError(f"eps must be a scalar or one radius per image ({x.shape[0]},); got shape "
                     f"{np.shape(eps)}.")
  if random_start_ and key is None:
    raise ValueError("random_start=True needs a PRNG key; pass key=jax.random.key(seed).")
  if x_init is not None and np.shape(x_init) != x.shape:
    raise ValueError(f"x_init must have the shape of x {x.shape}; got {np.shape(x_init)}.")
  if targets is not None:
    _check_targets(targets, labels)
  # Concrete values are checked now, even under the caller's trace (where jnp would trace).
  with jax.ensure_compile_time_eval():
    if _is_concrete(eps) and not bool(jnp.all(jnp.asarray(eps) >= 0)):
      raise ValueError(f"eps must be >= 0 (no NaN); got {eps}.")
    if step_size is not None and _is_concrete(step_size) and not bool(
        jnp.all(jnp.asarray(step_size) > 0)):
      raise ValueError(f"step_size must be > 0 (no NaN); got {step_size}.")
    if _is_concrete(low, high) and not bool(jnp.all(jnp.asarray(low) <= jnp.asarray(high))):
      raise ValueError(f"bounds must satisfy low <= high, without NaN, for every channel; got "
                       f"low={low}, high={high}.")
    if _is_concrete(x):
      if not bool(jnp.all(jnp.isfinite(x))):
        raise ValueError("x contains NaN or inf; attacks need a finite input batch. Fix: clean "
                         "or drop those samples first.")
      if _is_concrete(low, high):
        lo = jnp.asarray(low, x.dtype)
        hi = jnp.asarray(high, x.dtype)
        if bool(jnp.any((x < lo - 1e-4) | (x > hi + 1e-4))):
          raise ValueError("x lies outside the input bounds; pass the bounds of the model's "
                           "input encoding (mtajax.data.preprocess.input_bounds() for the "
                           "reference one).")
  return threat


def invalid_images(x: Array, eps: Array, bounds: Bounds, step_size: Array | None = None
                   ) -> Array:
  """(B,) bool: the images whose values :func:`check_inputs` would reject, for traced values.

  An image is invalid when its ε is negative or NaN, its step size is negative or NaN, it holds
  a NaN or inf, or when any channel's box has low > high or a NaN bound (then every image is). A
  step of 0 is valid (ε = 0 gives it by default, and a tiny ε's step ε/N can flush to 0): the image
  is not moved. An input outside a valid box is not invalid: the first projection clamps it in.
  """
  low, high = (jnp.asarray(b, x.dtype) for b in bounds)
  batch = x.shape[:1]
  bad = ~jnp.all(jnp.isfinite(x), axis=tuple(range(1, x.ndim)))
  eps = jnp.broadcast_to(eps, batch)
  bad |= ~jnp.all(low <= high) | ~(eps >= 0)
  if step_size is not None:
    bad |= ~(jnp.broadcast_to(step_size, batch) >= 0)
  return bad


def nan_where_invalid(result: AttackResult, bad: Array) -> AttackResult:
  """``result`` with the ``bad`` images' ``x_adv`` all NaN, and a ``checkify`` check that none is.

  The check is a no-op unless the caller wraps the attack in ``jax.experimental.checkify
  .checkify``, which then returns it as an error; without it the NaN images show the fault to
  every metric downstream. Valid images are returned bit for bit.
  """
  checkify.debug_check(~jnp.any(bad), "attack inputs invalid: an image has eps < 0 or NaN, a step "
                       "size < 0 or NaN, a NaN/inf value, or the bounds have low > high or NaN; "
                       "their x_adv is NaN. Fix: pass eps >= 0, step_size >= 0, finite x, low <= high.")
  nan = jnp.asarray(jnp.nan, result.x_adv.dtype)
  return result._replace(x_adv=jnp.where(per_sample(bad, result.x_adv), nan, result.x_adv))


def _check_targets(targets: Mapping[str, Any], labels: Any) -> None:
  if not isinstance(labels, Mapping):
    raise ValueError("targets= needs labels as a dict {task: label map, ...} (the batch of "
                     f"mtajax.tasks.make_loss_fn); got {type(labels).__name__}.")
  for task, target in targets.items():
    if task not in labels:
      raise ValueError(f"targets has task {task!r} but the labels have {sorted(labels)}; pass "
                       "one target map per task the loss reads from labels[task].")
    if np.shape(target) != np.shape(labels[task]):
      raise ValueError(f"target map for {task!r} has shape {np.shape(target)}; it must have the "
                       f"shape of labels[{task!r}], {np.shape(labels[task])}.")


def check_steps(num_steps: int) -> None:
  """num_steps must be a positive int (it is static)."""
  if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
    raise ValueError(f"num_steps must be an int >= 1; got {num_steps!r}.")
