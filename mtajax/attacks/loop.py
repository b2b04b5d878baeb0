"""The attack loop: an attack's pure pieces, driven by ``lax.scan`` or by a Python loop.

An attack never calls the model itself. Like an optax transformation, which takes the gradients its
caller computed, an attack is written as

* ``init(p) -> state``: the start point, with no model evaluation;
* phases ``(at, evaluate, update)``: ``at(p, state, xs) -> (x, k)`` names the point and the
  iteration whose loss the driver evaluates, ``evaluate`` says what it evaluates there (an
  :class:`Evaluation`: the direction's ascent direction and losses, the losses alone, ...), and
  ``update(p, state, evaluation, xs) -> (state, y)`` is the step rule's arithmetic;
* ``first`` phases (run once), ``body`` phases (run once per entry of ``schedule``), ``last``
  phases (run once), then ``finish(p, state, ys) -> AttackResult``.

``p`` is the :class:`Problem`: the loss function, the direction, the traced arguments and the
static options. :func:`run` drives an :class:`Algorithm` in one of three ways (``loop=``):

==============  ===================================================================================
``'unrolled'``  one program, the body in a fully unrolled ``lax.scan`` (XLA:CPU's fastest program;
                compile time grows with the number of steps)
``'rolled'``    one program, a rolled ``lax.scan`` (compiles once per step body; on XLA:CPU it runs
                several times slower; the GPU/TPU default)
``'python'``    a Python loop: each evaluation is one jitted program per (model, direction, attack
                loss, kind), shared by every phase and every attack that evaluates the same thing,
                and each phase's update a small jitted program. Compiles about one step, runs like
                the unrolled program on XLA:CPU. Outside a trace and on one process's arrays only:
                inside a caller's ``jit`` or on a multi-host batch it runs ``'rolled'``.
==============  ===================================================================================

``None`` picks :func:`mtajax.platform.default_loop`. The two scan loops give the same program
structure as one ``jax.jit``; the Python loop equals them up to float rounding (XLA fuses across
fewer operations).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mtajax import dispatch
from mtajax import platform
from mtajax.attacks import compile_once

Array = jax.Array
Loop = Literal["unrolled", "rolled", "python"]
LOOPS = platform.LOOPS


class Problem(NamedTuple):
  """What every piece of an attack reads: the loss function, the direction, the traced arguments
  (``args``: ``x0``, ``labels``, ``eps``, ``bounds``, ...) and the static ``options``."""
  loss_fn: Any
  direction: Any
  args: dict[str, Any]
  options: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """What the driver evaluates at a phase's point: ``fn(p, x, k)`` (the model's only calls).

  ``name`` identifies it (the Python loop shares one program per name, loss function, direction
  and options); ``fn`` must be a module-level function.
  """
  name: str
  fn: Callable[[Problem, Array, Array], Any]


class Phase(NamedTuple):
  """One model evaluation and the update that consumes it (``evaluate`` None: the update alone)."""
  at: Callable[[Problem, Any, Any], tuple[Array, Any]]
  evaluate: Evaluation | None
  update: Callable[[Problem, Any, Any, Any], tuple[Any, Any]]


class Algorithm(NamedTuple):
  """An attack as pure pieces (module docstring). ``schedule``: per-iteration NumPy arrays (a
  pytree whose leaves share their leading length, the number of ``body`` runs)."""
  init: Callable[[Problem], Any]
  first: tuple[Phase, ...]
  body: tuple[Phase, ...]
  schedule: Any
  last: tuple[Phase, ...]
  finish: Callable[[Problem, Any, Any], Any]


def resolve(loop: Loop | None) -> Loop:
  """``loop`` checked, ``None`` as the platform default."""
  if loop is None:
    return platform.default_loop()
  if loop not in LOOPS:
    raise ValueError(f"loop must be one of {', '.join(LOOPS)} or None; got {loop!r}.")
  return loop


def _phases(phases, p: Problem, state: Any, xs: Any, evaluate, update) -> tuple[Any, tuple]:
  ys = []
  for phase in phases:
    ev = None
    if phase.evaluate is not None:
      x, k = phase.at(p, state, xs)
      ev = evaluate(phase.evaluate, p, x, k)
    state, y = update(phase.update, p, state, ev, xs)
    ys.append(y)
  return state, tuple(ys)


def _direct_eval(evaluation: Evaluation, p: Problem, x: Array, k: Any) -> Any:
  return evaluation.fn(p, x, jnp.asarray(k, jnp.int32))


def _direct_update(update, p, state, ev, xs):
  return update(p, state, ev, xs)


def scanned(algorithm: Algorithm, p: Problem, unroll: bool | int) -> Any:
  """The whole attack as one traceable function (``'unrolled'`` / ``'rolled'``)."""
  state = algorithm.init(p)
  state, first = _phases(algorithm.first, p, state, None, _direct_eval, _direct_update)

  def body(state, xs):
    return _phases(algorithm.body, p, state, xs, _direct_eval, _direct_update)

  ys = ()
  if algorithm.body:
    xs = jax.tree.map(jnp.asarray, algorithm.schedule)
    state, ys = jax.lax.scan(body, state, xs, unroll=unroll)
  state, last = _phases(algorithm.last, p, state, None, _direct_eval, _direct_update)
  return algorithm.finish(p, state, (first, ys, last))


# The Python loop: every piece a jitted function of (static parts; traced parts).

EVALUATION_ARGS = ("labels", "targets", "clean")  # What an evaluation reads of the arguments.


def _problem(loss_arrays, dir_arrays, args, loss_static, dir_static, options) -> Problem:
  return Problem(compile_once.merge(loss_static, loss_arrays),
                 compile_once.merge(dir_static, dir_arrays), args,
                 compile_once.options_dict(options))


def _evaluate(loss_arrays, dir_arrays, args, x, k, *, evaluation, loss_static, dir_static,
              options):
  return evaluation.fn(_problem(loss_arrays, dir_arrays, args, loss_static, dir_static, options),
                       x, k)


def _piece(loss_arrays, dir_arrays, args, operands, *, fn, loss_static, dir_static, options):
  return fn(_problem(loss_arrays, dir_arrays, args, loss_static, dir_static, options), *operands)


_STATIC = ("loss_static", "dir_static", "options")
_evaluate_jit = dispatch.jit(_evaluate, static_argnames=("evaluation",) + _STATIC)
_piece_jit = dispatch.jit(_piece, static_argnames=("fn",) + _STATIC)


def evaluation_options(evaluation: Evaluation, options: dict[str, Any]) -> dict[str, Any]:
  """The options an evaluation program depends on: those its function reads (``fn.reads``, a
  tuple of option names), so that attacks evaluating the same thing share its program."""
  return {n: options[n] for n in getattr(evaluation.fn, "reads", ()) if n in options}


def python_loop(algorithm: Algorithm, loss_fn: Any, direction: Any, args: dict[str, Any],
                options: dict[str, Any]) -> Any:
  """The attack as a Python loop over jitted evaluations and updates (``'python'``)."""
  loss_static, loss_arrays = compile_once.split(loss_fn)
  dir_static, dir_arrays = compile_once.split(direction)
  static = dict(loss_static=loss_static, dir_static=dir_static)
  keyed = compile_once.static_options(options)
  eval_args = {k: args.get(k) for k in EVALUATION_ARGS}
  p = Problem(loss_fn, direction, args, options)  # for the phases' ``at`` (no computation)

  def piece(fn, *operands):
    return _piece_jit(loss_arrays, dir_arrays, args, operands, fn=fn, options=keyed, **static)

  def evaluate(evaluation, p, x, k):
    del p
    return _evaluate_jit(loss_arrays, dir_arrays, eval_args, x, jnp.asarray(k, jnp.int32),
                         evaluation=evaluation, options=compile_once.static_options(
                             evaluation_options(evaluation, options)), **static)

  def update(fn, p, state, ev, xs):
    del p
    return piece(fn, state, ev, xs)

  state = piece(algorithm.init)
  state, first = _phases(algorithm.first, p, state, None, evaluate, update)
  ys = []
  for i in range(_length(algorithm.schedule)):
    xs = jax.tree.map(lambda v, i=i: v[i], algorithm.schedule)
    state, y = _phases(algorithm.body, p, state, xs, evaluate, update)
    ys.append(y)
  ys = jax.tree.map(lambda *v: jnp.stack(v), *ys) if ys else ()
  state, last = _phases(algorithm.last, p, state, None, evaluate, update)
  return piece(algorithm.finish, state, (first, ys, last))


def _length(schedule: Any) -> int:
  leaves = jax.tree.leaves(schedule)
  return len(leaves[0]) if leaves else 0


def can_use_python_loop(algorithm: Algorithm, *values: Any) -> bool:
  """Whether the Python loop can run: outside a trace (no tracer among ``values``), on this
  process's devices only (no array of a multi-host run: its pieces would each need every process),
  and with at least one iteration (an empty loop's stacked outputs have no shape to take)."""
  local = not any(isinstance(v, jax.core.Tracer) or (
      isinstance(v, jax.Array) and not v.is_fully_addressable) for v in jax.tree.leaves(values))
  return local and (not algorithm.body or _length(algorithm.schedule) > 0)


def from_unroll(unroll: Any, loop: Loop | None) -> tuple[Loop, bool | int]:
  """``(loop, lax.scan unroll)`` of an attack's ``loop`` and its older ``unroll`` argument.

  ``unroll`` (kept for callers of earlier releases): ``'host'`` is the Python loop, True the
  unrolled scan, an int a scan unrolled that many steps at a time (1 or False: rolled).
  """
  if unroll is None:
    loop = resolve(loop)
    return loop, True if loop == "unrolled" else 1
  if loop is not None:
    raise ValueError(f"pass loop= or the older unroll=, not both; got loop={loop!r}, "
                     f"unroll={unroll!r}.")
  if unroll == "host":
    return "python", 1
  if isinstance(unroll, str) or isinstance(unroll, (int, np.integer)) and not isinstance(
      unroll, bool) and unroll < 1:
    raise ValueError(f"unroll must be True, an int >= 1 or 'host'; got {unroll!r}. Fix: pass "
                     f"loop= one of {', '.join(LOOPS)}.")
  if unroll is True:
    return "unrolled", True
  return "rolled", 1 if unroll is False else int(unroll)
