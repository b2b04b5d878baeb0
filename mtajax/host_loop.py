"""Host loops: a function's ``lax.scan`` loops run as a Python loop over one compiled step.

An N-step attack compiled as one XLA program is either unrolled (N copies of the step: XLA:CPU
compiles ~N times the code) or rolled (a while loop: XLA:CPU runs it several times slower).
:func:`jit` compiles each loop's *step* once and calls it N times from Python; the carry and the
stacked per-step outputs stay on the device and the calls are dispatched asynchronously, so it runs
about as fast as the unrolled program while compiling about one step's code.

``host_loop.jit(fun, static_argnames=...)(*args)`` traces ``fun`` once per static arguments and
input shapes (like ``jax.jit``) to a jaxpr, inlines the nested ``jit`` calls that contain a loop,
and runs the code between loops as compiled segments and each ``scan`` as ``length`` calls of one
compiled step (the step slices its ``xs`` and writes its outputs at a traced index). Loops nested in
other control flow (a ``cond`` branch, a loop body) stay inside their segment. Segments with equal
code share one compiled program. A call wrapped in :func:`shared` (the attack direction, say) is a
program of its own wherever it appears — before a loop, in a loop step, in another function traced
later — one per code. Results equal ``jax.jit(fun)`` up to float rounding (XLA fuses across fewer
operations). Used by the attacks with ``unroll='host'`` (:func:`mtajax.attacks.common.run`), the
attacked evaluation and the robust evaluation.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
from jax.extend import core
import jax.numpy as jnp
import numpy as np

HOST = "host"  # The ``unroll`` value that asks for host loops.
SHARED = "host_loop_shared"  # Name prefix of the calls that run as their own programs.

_PLANS: dict[Any, tuple["_Program", list[Any], Any]] = {}
_COMPILED: dict[str, Callable[..., Any]] = {}  # segment code -> its jitted function


def requested(options: Sequence[tuple[str, Any]]) -> bool:
  """Whether attack options ``((name, value), ...)`` ask for host loops (``unroll='host'``)."""
  return dict(options).get("unroll") == HOST


def clear() -> None:
  """Drops every plan and compiled segment (``mtajax.memory.release_compiled`` calls it)."""
  _PLANS.clear()
  _COMPILED.clear()


def shared(fun: Callable[..., Any], name: str) -> Callable[..., Any]:
  """``fun`` as a call that host loops run as its own compiled program, one for every call site
  with equal code (the attack direction at the start point and in each loop step, say, or after
  PGD and after APGD); ``jax.jit`` inlines it like any nested ``jit``."""
  def call(*args):
    return fun(*args)
  call.__name__ = call.__qualname__ = f"{SHARED}_{name}"
  return jax.jit(call)


def _is_loop(eqn: core.JaxprEqn) -> bool:
  return eqn.primitive.name == "scan"


def _is_call(eqn: core.JaxprEqn) -> bool:
  return eqn.primitive.name in ("jit", "pjit") and isinstance(eqn.params.get("jaxpr"),
                                                             core.ClosedJaxpr)


def _is_shared(eqn: core.JaxprEqn) -> bool:
  return _is_call(eqn) and str(eqn.params.get("name", "")).startswith(SHARED)


def _has(jaxpr: core.Jaxpr, kind: Callable[[core.JaxprEqn], bool]) -> bool:
  """Whether ``jaxpr`` or a nested ``jit`` in it has an equation of ``kind``."""
  return any(kind(e) or (_is_call(e) and _has(e.params["jaxpr"].jaxpr, kind))
             for e in jaxpr.eqns)


def _splits(eqn: core.JaxprEqn) -> bool:
  """Whether a nested ``jit`` holds a loop or a shared call (it is then run as a program)."""
  return _is_call(eqn) and _has(eqn.params["jaxpr"].jaxpr, lambda e: _is_loop(e) or _is_shared(e))


def _read(env: dict, atom: Any) -> Any:
  return atom.val if isinstance(atom, core.Literal) else env[atom]


def _write(env: dict, var: Any, value: Any) -> None:
  if not isinstance(var, core.DropVar):
    env[var] = value


def _used(eqns: Sequence[core.JaxprEqn]) -> set:
  return {v for e in eqns for v in e.invars if not isinstance(v, core.Literal)}


@dataclasses.dataclass
class _Segment:
  """Consecutive loop-free equations, one compiled program."""
  eqns: list[core.JaxprEqn]
  inputs: list[Any] = dataclasses.field(default_factory=list)
  outputs: list[Any] = dataclasses.field(default_factory=list)
  fn: Callable[..., Any] | None = None

  def link(self, needed_later: set) -> None:
    defined = {v for e in self.eqns for v in e.outvars if not isinstance(v, core.DropVar)}
    # In order of first use / definition, so that equal code prints equally.
    self.inputs = list(dict.fromkeys(v for e in self.eqns for v in e.invars
                                     if not isinstance(v, core.Literal) and v not in defined))
    self.outputs = [v for e in self.eqns for v in e.outvars if v in needed_later]
    effects = frozenset().union(*(e.effects for e in self.eqns))
    info = core.DebugInfo("host_loop", "segment", None, None)
    closed = core.ClosedJaxpr(core.Jaxpr((), self.inputs, self.outputs, self.eqns, effects,
                                         debug_info=info), ())
    code = str(closed)  # canonical names: equal code -> one program
    if code not in _COMPILED:
      _COMPILED[code] = jax.jit(core.jaxpr_as_fun(closed))
    self.fn = _COMPILED[code]

  def __call__(self, env: dict) -> None:
    for var, value in zip(self.outputs, self.fn(*(env[v] for v in self.inputs))):
      env[var] = value


def _typed(value: Any, aval: Any) -> Any:
  return value if jax.typeof(value) == aval else jnp.asarray(value, aval.dtype)


def _placed(values: Any) -> Any:
  """Unsharded arrays replicated on the mesh of the others (the step's outputs live there: a
  first call with other shardings would compile the step twice); single-process only."""
  leaves = jax.tree.leaves(values)
  mesh = next((v.sharding.mesh for v in leaves if isinstance(v, jax.Array) and isinstance(
      v.sharding, jax.sharding.NamedSharding)), None)
  if mesh is None or jax.process_count() > 1:
    return values
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.tree.map(lambda v: v if isinstance(v, jax.Array) and isinstance(
      v.sharding, jax.sharding.NamedSharding) else jax.device_put(v, replicated), values)


@dataclasses.dataclass
class _Shared:
  """A :func:`shared` call: one compiled program per code."""
  eqn: core.JaxprEqn

  def __post_init__(self):
    closed = self.eqn.params["jaxpr"]
    # Baked-in constants (rare: closed-over values are inputs) make the program its own.
    code = f"shared:{closed}" + "".join(f":{id(c)}" for c in closed.consts)
    if code not in _COMPILED:
      _COMPILED[code] = jax.jit(core.jaxpr_as_fun(closed))
    self.fn = _COMPILED[code]

  def __call__(self, env: dict) -> None:
    for var, value in zip(self.eqn.outvars, self.fn(*(_read(env, a) for a in self.eqn.invars))):
      _write(env, var, value)


@dataclasses.dataclass
class _Loop:
  """One ``scan``: ``length`` calls of its compiled step (of its step's programs, when the body
  makes :func:`shared` calls)."""
  eqn: core.JaxprEqn

  def __post_init__(self):
    p = self.eqn.params
    body, num_consts, num_carry = p["jaxpr"], p["num_consts"], p["num_carry"]
    self.length, self.reverse, self.num_consts, self.num_carry = (
        p["length"], p["reverse"], num_consts, num_carry)
    self.y_avals = [v.aval for v in body.jaxpr.outvars[num_carry:]]
    self.in_avals = [v.aval for v in body.jaxpr.invars]

    def step(consts, carry, xs, ys, i):
      x_i = [jax.lax.dynamic_index_in_dim(x, i, keepdims=False) for x in xs]
      out = core.jaxpr_as_fun(body)(*consts, *carry, *x_i)
      ys = [jax.lax.dynamic_update_index_in_dim(buf, y, i, 0)
            for buf, y in zip(ys, out[num_carry:])]
      return list(out[:num_carry]), ys

    self.program, self.fn = None, None
    if _has(body.jaxpr, _is_shared):  # The step as a program of segments and shared calls.
      n = num_consts + num_carry  # Traced as __call__ passes them: consts and carry typed.
      xs = [v.aval for v in self.eqn.invars[n:]]
      ys = [jax.ShapeDtypeStruct((self.length,) + a.shape, a.dtype) for a in self.y_avals]
      closed = jax.make_jaxpr(step)(self.in_avals[:num_consts], self.in_avals[num_consts:n], xs,
                                    ys, jax.ShapeDtypeStruct((), jnp.int32))
      self.program, self.program_consts = _Program(closed.jaxpr), list(closed.consts)
    else:
      code = "loop:" + str(body)
      if code not in _COMPILED:
        _COMPILED[code] = jax.jit(step)
      self.fn = _COMPILED[code]

  def _run(self, consts, carry, xs, ys, i):
    if self.program is None:
      return self.fn(consts, carry, xs, ys, i)
    out = self.program.run(self.program_consts, [*consts, *carry, *xs, *ys, np.int32(i)])
    return out[:self.num_carry], out[self.num_carry:]

  def __call__(self, env: dict) -> None:
    # As the step's input types: scan promotes weakly typed initial carries (a literal, say), and
    # a weak first carry would compile the step twice.
    values = [_typed(_read(env, a), aval) for a, aval in zip(
        self.eqn.invars[:self.num_consts + self.num_carry], self.in_avals)]
    values += [_read(env, a) for a in self.eqn.invars[self.num_consts + self.num_carry:]]
    consts = values[:self.num_consts]
    carry = values[self.num_consts:self.num_consts + self.num_carry]
    xs = values[self.num_consts + self.num_carry:]
    ys = [jnp.zeros((self.length,) + a.shape, a.dtype) for a in self.y_avals]
    consts, carry, xs, ys = _placed((consts, carry, xs, ys))
    order = range(self.length - 1, -1, -1) if self.reverse else range(self.length)
    for i in order:
      carry, ys = self._run(consts, carry, xs, ys, i)
    for var, value in zip(self.eqn.outvars, list(carry) + list(ys)):
      _write(env, var, value)


@dataclasses.dataclass
class _Call:
  """A nested ``jit`` that contains a loop or a shared call: run as its own program."""
  eqn: core.JaxprEqn

  def __post_init__(self):
    closed = self.eqn.params["jaxpr"]
    self.program, self.consts = _Program(closed.jaxpr), list(closed.consts)

  def __call__(self, env: dict) -> None:
    out = self.program.run(self.consts, [_read(env, a) for a in self.eqn.invars])
    for var, value in zip(self.eqn.outvars, out):
      _write(env, var, value)


class _Program:
  """A jaxpr as segments, loops and calls, in order."""

  def __init__(self, jaxpr: core.Jaxpr):
    self.jaxpr = jaxpr
    steps: list[Any] = []
    for e in jaxpr.eqns:
      if _is_loop(e):
        steps.append(_Loop(e))
      elif _is_shared(e):
        steps.append(_Shared(e))
      elif _splits(e):
        steps.append(_Call(e))
      elif steps and isinstance(steps[-1], _Segment):
        steps[-1].eqns.append(e)
      else:
        steps.append(_Segment([e]))
    needed = {v for v in jaxpr.outvars if not isinstance(v, core.Literal)}
    for s in reversed(steps):  # Liveness: what each segment must hand on.
      if isinstance(s, _Segment):
        s.link(needed)
        needed |= set(s.inputs)
      else:
        needed |= _used([s.eqn])
    self.steps = steps

  def run(self, consts: Sequence[Any], args: Sequence[Any]) -> list[Any]:
    env: dict = {}
    for var, value in zip(list(self.jaxpr.constvars) + list(self.jaxpr.invars),
                          list(consts) + list(args)):
      _write(env, var, value)
    for s in self.steps:
      s(env)
    return [_read(env, v) for v in self.jaxpr.outvars]


def jit(fun: Callable[..., Any], *, static_argnames: Sequence[str] = ()) -> Callable[..., Any]:
  """Like ``jax.jit(fun, static_argnames=...)``, with the loops run from the host (module doc).

  Static arguments are passed by keyword and must be hashable; everything else is traced.
  """
  static_argnames = tuple(static_argnames)

  @functools.wraps(fun)
  def wrapped(*args, **kwargs):
    static = tuple(sorted((k, kwargs.pop(k)) for k in static_argnames if k in kwargs))
    leaves, tree = jax.tree.flatten((args, kwargs))
    key = (fun, static, tree, tuple(jax.typeof(v) for v in leaves))
    if key not in _PLANS:
      def flat(*leaves_):
        a, k = jax.tree.unflatten(tree, leaves_)
        return fun(*a, **k, **dict(static))
      closed, shape = jax.make_jaxpr(flat, return_shape=True)(*leaves)
      _PLANS[key] = (_Program(closed.jaxpr), list(closed.consts), jax.tree.structure(shape))
    program, consts, out_tree = _PLANS[key]
    return jax.tree.unflatten(out_tree, program.run(consts, leaves))

  return wrapped
