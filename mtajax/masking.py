"""Gradient-masking checks of a (defended) multi-task model.

A defence that only hides the gradient looks robust to gradient attacks and is not. The checks of
Carlini et al., "On Evaluating Adversarial Robustness" (1902.06705, §5 checklist), and the flags of
fra31/auto-attack, each a function of ``predict(state, x)``, its tasks and test batches that
returns a :class:`Check` (name, passed, the numbers, a one-line reason):

* :func:`eps_sweep`: the robust ARP rises with ε (monotone within a tolerance) and at a large ε
  (default 64 input units, 64/255 of the pixel range) the model breaks;
* :func:`transfer`: attacks computed on the undefended twin are not stronger on the defended model
  than the white-box attacks;
* :func:`more_steps`: the suite with more steps and restarts (:func:`mtajax.robust.scaled_suite`)
  does not raise the robust ARP by more than a tolerance;
* :func:`gradients`: the input gradients of every task loss are finite and non-zero on (almost)
  every image.

The robust numbers come from :func:`mtajax.robust.evaluate` (the suite a parameter); numbers a
caller already has (its stored robust records) can be passed in and are not measured again.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mtajax import dispatch
from mtajax import evaluate as evaluate_lib
from mtajax import platform
from mtajax import robust
from mtajax import tasks as tasks_lib

Predict = Callable[[Any, jax.Array], Mapping[str, jax.Array]]
Batches = Iterable[Mapping[str, np.ndarray]]
LARGE_EPS = 64.0  # 64/255 of the pixel range, in input units (0-255 minus the mean)


@dataclasses.dataclass(frozen=True)
class Check:
  """The outcome of one check: ``numbers`` are what ``reason`` states."""
  name: str
  passed: bool
  numbers: dict[str, float]
  reason: str


def _robust_arp(predict: Predict, state: Any, batches: Sequence[Mapping[str, np.ndarray]],
                tasks: Sequence[tasks_lib.Task], *, eps: float, bounds: tuple[Any, Any],
                suite: str | Sequence[robust.Member], key: jax.Array) -> float:
  return robust.evaluate(predict, state, batches, tasks, eps=eps, bounds=bounds, suite=suite,
                         key=key).arp


def _finite(numbers: Mapping[str, float]) -> list[str]:
  return [k for k, v in numbers.items() if not math.isfinite(v)]


def eps_verdict(arps: Mapping[float, float], *, large_eps: float = LARGE_EPS,
                tolerance: float = 1.0, broken_arp: float = 50.0) -> Check:
  """:func:`eps_sweep`'s rule on robust ARPs by ε (``large_eps`` among them)."""
  numbers = {f"arp@eps{e:g}": float(arps[e]) for e in sorted(arps)}
  bad = _finite(numbers)
  if bad:
    return Check("eps_sweep", False, numbers, f"non-finite robust ARP ({', '.join(bad)})")
  eps = sorted(arps)
  falls = [(a, b) for a, b in zip(eps, eps[1:]) if arps[b] < arps[a] - tolerance]
  if falls:
    a, b = falls[0]
    return Check("eps_sweep", False, numbers,
                 f"robust ARP falls from {arps[a]:.2f} at eps {a:g} to {arps[b]:.2f} at eps {b:g} "
                 f"(tolerance {tolerance:g}): the attack gets weaker as it may go further")
  if arps[large_eps] < broken_arp:
    return Check("eps_sweep", False, numbers,
                 f"at eps {large_eps:g} the robust ARP is only {arps[large_eps]:.2f} (< "
                 f"{broken_arp:g}): an unbounded-looking defence is a masked gradient")
  return Check("eps_sweep", True, numbers,
               f"robust ARP rises with eps and reaches {arps[large_eps]:.2f} at eps {large_eps:g}")


def eps_sweep(predict: Predict, state: Any, batches: Batches, tasks: Sequence[tasks_lib.Task], *,
              eps: Sequence[float], bounds: tuple[Any, Any],
              suite: str | Sequence[robust.Member] = "standard", key: jax.Array,
              large_eps: float = LARGE_EPS, tolerance: float = 1.0, broken_arp: float = 50.0,
              known: Mapping[float, float] | None = None) -> Check:
  """Robust ARP at each of ``eps`` and ``large_eps``: monotone within ``tolerance`` points, and
  at least ``broken_arp`` at ``large_eps`` (``known``: robust ARPs by ε already measured)."""
  if not large_eps > max(eps):
    raise ValueError(f"large_eps {large_eps:g} must exceed every eps {tuple(eps)}; raise it.")
  batches = list(batches)
  arps = dict(known or {})
  for e in [*eps, large_eps]:
    if e not in arps:
      arps[e] = _robust_arp(predict, state, batches, tasks, eps=e, bounds=bounds, suite=suite,
                            key=key)
  return eps_verdict({e: arps[e] for e in [*eps, large_eps]}, large_eps=large_eps,
                     tolerance=tolerance, broken_arp=broken_arp)


def _transferred(source_state, batch, eps, bounds, key, index, *, predict, tasks, program, loop):
  """The images ``program`` finds against ``predict(source_state, .)``."""
  loss_fn = program.loss_fn(functools.partial(predict, source_state), tasks)
  result = program(loss_fn, batch["image"], batch, eps=eps, bounds=bounds, key=key,
                   example_weight=batch["example_weight"], index=index, loop=loop)
  return jax.lax.stop_gradient(result.x_adv)


_STATIC = ("predict", "tasks", "program", "loop")
_compiled_transfer = dispatch.jit(_transferred, static_argnames=_STATIC)


def transfer_arps(predict: Predict, state: Any, source_predict: Predict, source_state: Any,
                  batches: Batches, tasks: Sequence[tasks_lib.Task], *, eps: float,
                  bounds: tuple[Any, Any], suite: str | Sequence[robust.Member] = "standard",
                  key: jax.Array) -> dict[str, float]:
  """Per candidate of ``suite``: the ARP of ``predict(state, .)`` on the images that candidate
  finds against ``source_predict(source_state, .)`` (the transfer attack)."""
  tasks = tuple(tasks)
  batches = [{**b, "example_weight": np.asarray(b.get("example_weight", np.ones(len(b["image"]))),
                                                np.float32)} for b in batches]
  clean = evaluate_lib.evaluate(predict, state, batches, tasks).metrics
  loop = platform.evaluation_loop()
  attack = _transferred if loop == "python" else _compiled_transfer
  eps_ = jnp.float32(eps)
  out = {}
  for cand in robust.candidates(suite, [t.name for t in tasks]):
    adversarial = []
    for j, b in enumerate(batches):
      chunk_key = jax.random.fold_in(jax.random.fold_in(key, cand.restart), j)
      index = None if cand.index is None else jnp.int32(cand.index)
      x = attack(source_state, {k: jnp.asarray(v) for k, v in b.items()}, eps_, bounds, chunk_key,
                 index, predict=source_predict, tasks=tasks, program=cand.program, loop=loop)
      adversarial.append({**b, "image": np.asarray(x)})
    attacked = evaluate_lib.evaluate(predict, state, adversarial, tasks).metrics
    out[cand.name] = tasks_lib.arp(clean, attacked, tasks).total
  return out


def transfer_verdict(transferred: Mapping[str, float], whitebox_arp: float, *,
                     tolerance: float = 1.0) -> Check:
  """:func:`transfer`'s rule: the strongest transfer ARP <= white-box robust ARP + tolerance."""
  numbers = {**{f"transfer/{k}": float(v) for k, v in transferred.items()},
             "whitebox_arp": float(whitebox_arp)}
  bad = _finite(numbers)
  if bad:
    return Check("transfer", False, numbers, f"non-finite ARP ({', '.join(bad)})")
  best = max(transferred, key=transferred.get)
  numbers["transfer_arp"] = float(transferred[best])
  if transferred[best] > whitebox_arp + tolerance:
    return Check("transfer", False, numbers,
                 f"{best} computed on the undefended twin reaches ARP {transferred[best]:.2f}, "
                 f"above the white-box {whitebox_arp:.2f} (tolerance {tolerance:g}): the "
                 "white-box gradient is masked")
  return Check("transfer", True, numbers,
               f"transfer ARP {transferred[best]:.2f} ({best}) <= white-box {whitebox_arp:.2f}")


def transfer(predict: Predict, state: Any, source_state: Any, batches: Batches,
             tasks: Sequence[tasks_lib.Task], *, eps: float, bounds: tuple[Any, Any],
             suite: str | Sequence[robust.Member] = "standard", key: jax.Array,
             source_predict: Predict | None = None, tolerance: float = 1.0,
             whitebox_arp: float | None = None) -> Check:
  """The suite's attacks computed on the undefended twin ``source_predict(source_state, .)``
  (default: the same ``predict``) are no stronger on the model than its white-box robust ARP
  (``whitebox_arp``, measured with ``suite`` when not given)."""
  batches = list(batches)
  if whitebox_arp is None:
    whitebox_arp = _robust_arp(predict, state, batches, tasks, eps=eps, bounds=bounds, suite=suite,
                               key=key)
  transferred = transfer_arps(predict, state, source_predict or predict, source_state, batches,
                              tasks, eps=eps, bounds=bounds, suite=suite, key=key)
  return transfer_verdict(transferred, whitebox_arp, tolerance=tolerance)


def more_steps_verdict(base_arp: float, scaled_arp: float, *, factor: int = 2,
                       tolerance: float = 1.0) -> Check:
  """:func:`more_steps`' rule: ``scaled_arp - base_arp <= tolerance``."""
  numbers = {"arp": float(base_arp), f"arp_x{factor}": float(scaled_arp)}
  bad = _finite(numbers)
  if bad:
    return Check("more_steps", False, numbers, f"non-finite robust ARP ({', '.join(bad)})")
  gain = scaled_arp - base_arp
  numbers["gain"] = float(gain)
  if gain > tolerance:
    return Check("more_steps", False, numbers,
                 f"{factor}x the steps and restarts raise the robust ARP by {gain:.2f} points "
                 f"({base_arp:.2f} -> {scaled_arp:.2f}, tolerance {tolerance:g}): the suite has "
                 "not converged on this model")
  return Check("more_steps", True, numbers,
               f"{factor}x the steps and restarts change the robust ARP by {gain:+.2f} points")


def more_steps(predict: Predict, state: Any, batches: Batches, tasks: Sequence[tasks_lib.Task], *,
               eps: float, bounds: tuple[Any, Any],
               suite: str | Sequence[robust.Member] = "standard", key: jax.Array,
               factor: int = 2, tolerance: float = 1.0, base_arp: float | None = None) -> Check:
  """``suite`` with ``factor`` times the steps and restarts raises the robust ARP by at most
  ``tolerance`` points over ``suite`` itself (``base_arp``: already measured)."""
  if not (isinstance(factor, int) and factor >= 2):
    raise ValueError(f"factor must be an integer >= 2; got {factor!r}.")
  batches = list(batches)
  run = functools.partial(_robust_arp, predict, state, batches, tasks, eps=eps, bounds=bounds,
                          key=key)
  if base_arp is None:
    base_arp = run(suite=suite)
  return more_steps_verdict(base_arp, run(suite=robust.scaled_suite(suite, factor)),
                            factor=factor, tolerance=tolerance)


@functools.partial(jax.jit, static_argnames=("predict", "tasks"))
def _gradient_flags(state, batch, *, predict, tasks):
  """Per task, per image: all input-gradient entries finite, and any of them non-zero."""
  loss_fn = tasks_lib.loss_fn.make_loss_fn(functools.partial(predict, state), tasks, "image")
  losses, vjp = jax.vjp(lambda x: loss_fn(x, batch), batch["image"])
  flags = {}
  for t in tasks:
    (g,) = vjp({n: jnp.ones_like(v) if n == t.name else jnp.zeros_like(v)
                for n, v in losses.items()})
    finite = jnp.all(jnp.isfinite(g), axis=(1, 2, 3)) & jnp.isfinite(losses[t.name])
    flags[t.name] = (finite, jnp.any(g != 0, axis=(1, 2, 3)))
  return flags


def gradients(predict: Predict, state: Any, batches: Batches, tasks: Sequence[tasks_lib.Task], *,
              min_share: float = 0.95) -> Check:
  """The input gradient of every task loss is finite on every image and non-zero on at least
  ``min_share`` of the images (an image with no valid label of a task may have none)."""
  tasks = tuple(tasks)
  finite, nonzero = {t.name: [] for t in tasks}, {t.name: [] for t in tasks}
  for b in batches:
    real = np.asarray(b.get("example_weight", np.ones(len(b["image"])))) > 0
    batch = {k: jnp.asarray(v) for k, v in b.items() if k != "example_weight"}
    for name, (f, nz) in _gradient_flags(state, batch, predict=predict, tasks=tasks).items():
      finite[name].append(np.asarray(f)[real])
      nonzero[name].append(np.asarray(nz)[real])
  finite = {n: np.concatenate(v) for n, v in finite.items()}
  nonzero = {n: np.concatenate(v) & finite[n] for n, v in nonzero.items()}
  numbers = {**{f"finite/{n}": float(v.mean()) for n, v in finite.items()},
             **{f"nonzero/{n}": float(v.mean()) for n, v in nonzero.items()}}
  not_finite = [n for n, v in finite.items() if not v.all()]
  if not_finite:
    return Check("gradients", False, numbers,
                 f"input gradients of {', '.join(not_finite)} are NaN/inf on some images")
  weak = {n: v.mean() for n, v in nonzero.items() if v.mean() < min_share}
  if weak:
    n = min(weak, key=weak.get)
    return Check("gradients", False, numbers,
                 f"the input gradient of {n} is zero on {1 - weak[n]:.0%} of the images (rule: "
                 f"non-zero on >= {min_share:.0%}): a flat or quantised input masks the gradient")
  return Check("gradients", True, numbers,
               f"input gradients finite everywhere and non-zero on >= "
               f"{min(v.mean() for v in nonzero.values()):.0%} of the images per task")
