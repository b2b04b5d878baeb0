"""What every attack shares: the result type, the loss's context, threat-model steps, starts, best
points, input checks and the compile-once wrapper.

An attack is a step rule (its own module) × a start (:func:`start`: none, uniform in the ball,
AutoAttack's, or a given point) × a threat model (:mod:`mtajax.attacks.threat`, intersected with
the input box) × a direction (:mod:`mtajax.directions`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Literal, Mapping, NamedTuple

import jax
from jax.experimental import checkify
import jax.numpy as jnp
import numpy as np

from mtajax import dispatch
from mtajax.attacks import compile_once
from mtajax.attacks import loop as loop_lib
from mtajax.attacks import threat as threat_lib

Array = jax.Array
Bounds = tuple[Any, Any]
Start = Literal["none", "uniform", "autoattack", "given"]
LINF = threat_lib.Linf()
per_sample = threat_lib.per_sample  # (B,) values against a (B, ...) batch (directions.base)


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
    num_steps: the attack's number of iterations (static); None for a loss function whose
      ``reads_steps`` is False (``attack_losses.register(..., reads_steps=False)``).
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


def loss_at(p, k: Any):
  """The loss an attack of problem ``p`` ascends at iteration ``k``: the context bound (clean
  prediction ``p.args['clean']``, ``p.options['context_steps']``), targets applied."""
  return targeted(bind(p.loss_fn, k, p.options.get("context_steps"), p.args.get("clean")),
                  p.args.get("targets"), p.direction, p.options.get("keep_untargeted", False))


def direction_losses(direction, loss_fn, x: Array, labels: Any) -> dict[str, Array]:
  """The losses ``direction`` reads at ``x`` without a gradient (``direction.losses``; the plain
  losses for direction objects written without it)."""
  fn = getattr(direction, "losses", None)
  return loss_fn(x, labels) if fn is None else fn(loss_fn, x, labels)


def _ascent(p, x: Array, k: Array) -> tuple[Array, dict[str, Array]]:
  return p.direction(loss_at(p, k), x, p.args["labels"])


def _losses(p, x: Array, k: Array) -> dict[str, Array]:
  return direction_losses(p.direction, loss_at(p, k), x, p.args["labels"])


_ascent.reads = _losses.reads = ("context_steps", "keep_untargeted")
# The model evaluations of PGD, APGD, FGSM and FAT's early-stopped PGD.
ASCENT = loop_lib.Evaluation("ascent", _ascent)  # (D, losses): one forward and backward pass
LOSSES = loop_lib.Evaluation("losses", _losses)  # losses: one forward pass


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
  a = per_sample(step_size, x)
  return clip(threat.project(x + a * threat.unit(direction), x0, eps), bounds)


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


def _attack(loss_arrays, dir_arrays, args, *, build, loss_static, dir_static, options):
  """The whole attack in one program (the scan loops)."""
  options = compile_once.options_dict(options)
  loss_fn = compile_once.merge(loss_static, loss_arrays)
  args = {**args, "clean": clean_context(loss_fn, args["x0"], args["labels"])}
  p = loop_lib.Problem(loss_fn, compile_once.merge(dir_static, dir_arrays), args, options)
  return _invalid(loop_lib.scanned(build(options), p, options["scan_unroll"]), args)


def _clean(loss_arrays, args, *, loss_static):
  return clean_context(compile_once.merge(loss_static, loss_arrays), args["x0"], args["labels"])


def _invalid(result, args):
  """``result`` with the images :func:`invalid_images` flags as NaN."""
  return nan_where_invalid(result, invalid_images(args["x0"], args["eps"], args["bounds"],
                                                  args.get("step_size")))


_compiled = jax.jit(_attack, static_argnames=("build", "loss_static", "dir_static", "options"))
# The Python loop's own programs (never under a caller's trace): checks discharged.
_clean_jit = dispatch.jit(_clean, static_argnames=("loss_static",))
_invalid_jit = dispatch.jit(_invalid)


def run(build: Callable[[dict[str, Any]], loop_lib.Algorithm], loss_fn, direction,
        args: dict[str, Any], *, loop: loop_lib.Loop | None = None, unroll: Any = None,
        **options: Any) -> AttackResult:
  """Runs the attack ``build(options)`` (a :class:`mtajax.attacks.loop.Algorithm`) on ``loss_fn``.

  ``args`` are traced (arrays, pytrees, None) and name the clean batch ``x0``, ``labels``, ``eps``,
  ``bounds`` and optionally ``step_size``; ``options`` are static (hashable). The compiled
  programs are reused whenever the loss function's and direction's static structure and the
  options are equal, whatever their arrays hold. ``loop`` (or the older ``unroll``) chooses the
  driver (:mod:`mtajax.attacks.loop`). Images that :func:`invalid_images` flags come back NaN
  (:func:`nan_where_invalid`).
  """
  check_labels = getattr(loss_fn, "check_labels", None)  # e.g. a LossFn's label range checks.
  if check_labels is not None and _is_concrete(args["labels"]):
    check_labels(args["labels"])
  loop, scan_unroll = loop_lib.from_unroll(unroll, loop)
  # The step count is part of the compiled programs only for losses that read it.
  options["context_steps"] = options.get("num_steps") if takes_context(loss_fn) and getattr(
      loss_fn, "reads_steps", True) else None
  algorithm = build(options)
  loss_static, loss_arrays = compile_once.split(loss_fn)
  if loop == "python" and loop_lib.can_use_python_loop(algorithm, loss_fn, direction, args):
    clean = None if not takes_context(loss_fn) else _clean_jit(loss_arrays, args,
                                                               loss_static=loss_static)
    args = {**args, "clean": clean}
    return _invalid_jit(loop_lib.python_loop(algorithm, loss_fn, direction, args, options), args)
  dir_static, dir_arrays = compile_once.split(direction)
  options["scan_unroll"] = scan_unroll
  return _compiled(loss_arrays, dir_arrays, args, build=build, loss_static=loss_static,
                   dir_static=dir_static, options=compile_once.static_options(options))


def _is_concrete(*values: Any) -> bool:
  """Whether every leaf of ``values`` can be read on this host: no tracer (values captured by a
  trace are concrete) and no array spread over other processes' devices (a multi-host batch; its
  bad values are left to :func:`invalid_images`, as traced ones)."""
  return not any(isinstance(v, jax.core.Tracer) or (
      isinstance(v, jax.Array) and not v.is_fully_addressable) for v in jax.tree.leaves(values))


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
