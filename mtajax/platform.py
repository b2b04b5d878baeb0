"""Platform-specific defaults: the XLA:CPU gradient workaround and the attack loops.

jaxlib 0.10.2's XLA:CPU fuses reductions through YNNPACK and then computes ``jit(vmap(vjp))``
per-task gradients wrongly for normalise-then-reduce losses such as the surface-normal loss
(regression test: tests/test_tasks_loss_fn.py; docs/design.md, "The XLA:CPU gradient bug").
Disabling that fusion kind fixes it at no measured cost.
The flag must be in ``XLA_FLAGS`` before JAX creates its CPU backend, so :mod:`mtajax` applies it at
import time when that is still possible and warns otherwise.
"""

from __future__ import annotations

import os
import warnings

CPU_WORKAROUND_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-reduce"
# jaxlib versions known to need the flag (and to accept it: XLA aborts on unknown flags).
_AFFECTED_JAXLIB = ("0.10.2",)


def _backends_initialised() -> bool:
  # JAX has no public way to ask whether a backend exists without creating one (jax.devices()
  # would start it, and the flag must be set before that); this one private read is the check.
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  return bool(getattr(xla_bridge, "_backends", {}))


def apply_cpu_workaround() -> bool:
  """Adds :data:`CPU_WORKAROUND_FLAG` to ``XLA_FLAGS`` if this jaxlib needs it.

  Returns True when the flag is (now) in effect. ``MTAJAX_CPU_WORKAROUND=0`` disables it,
  ``=1`` forces it on any jaxlib.
  """
  import jaxlib  # pylint: disable=g-import-not-at-top
  setting = os.environ.get("MTAJAX_CPU_WORKAROUND", "auto")
  flags = os.environ.get("XLA_FLAGS", "")
  if CPU_WORKAROUND_FLAG in flags:
    return True
  wanted = setting == "1" or (setting == "auto" and jaxlib.__version__ in _AFFECTED_JAXLIB)
  if not wanted:
    return False
  if _backends_initialised():
    warnings.warn(
        f"JAX was initialised before mtajax was imported; XLA:CPU per-task gradients may be wrong "
        f"on jaxlib {jaxlib.__version__}. Fix: import mtajax first, or set "
        f"XLA_FLAGS={CPU_WORKAROUND_FLAG} before starting Python.", RuntimeWarning, stacklevel=3)
    return False
  os.environ["XLA_FLAGS"] = f"{flags} {CPU_WORKAROUND_FLAG}".strip()
  return True


# The ways an attack's iterations can run (mtajax.attacks.loop).
LOOPS = ("unrolled", "rolled", "python")


def _chosen_loop(variable: str) -> str | None:
  """The loop an environment variable names (None when unset); one line naming the fix if bad."""
  chosen = os.environ.get(variable)
  if chosen and chosen not in LOOPS:
    raise ValueError(f"{variable} must be {', '.join(LOOPS[:-1])} or {LOOPS[-1]}; got {chosen!r}.")
  return chosen or None


def default_loop() -> str:
  """How an attack's iterations run when the caller passes ``loop=None``
  (:mod:`mtajax.attacks.loop`).

  ``MTAJAX_DEFAULT_LOOP`` (``unrolled``, ``rolled`` or ``python``) chooses it for a run; otherwise,
  on XLA:CPU a fully unrolled ``lax.scan``: a rolled one of conv-net steps runs ~3x slower
  (benchmarks/attack_core.py); on GPU/TPU a rolled loop compiles faster and runs as fast.
  """
  import jax  # pylint: disable=g-import-not-at-top
  return _chosen_loop("MTAJAX_DEFAULT_LOOP") or (
      "unrolled" if jax.default_backend() == "cpu" else "rolled")


def evaluation_loop() -> str:
  """How mtajax's own evaluations (the sweep, the robust suite, ``evaluate``) run their attacks
  when the caller passes ``loop=None``.

  ``MTAJAX_ATTACK_LOOP`` (``unrolled``, ``rolled`` or ``python``) chooses it for a run; otherwise,
  on XLA:CPU in one process the Python loop (it compiles one step per attack instead of N unrolled
  ones and runs as fast as the unrolled program, benchmarks/main_job.py), elsewhere the rolled scan.
  """
  import jax  # pylint: disable=g-import-not-at-top
  # A multi-host run's arrays span every process: one program per attack, as on accelerators.
  return _chosen_loop("MTAJAX_ATTACK_LOOP") or (
      "python" if jax.default_backend() == "cpu" and jax.process_count() == 1 else "rolled")
