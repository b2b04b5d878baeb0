"""The main job's phase timer: wall seconds per phase and the JAX compile seconds inside each."""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

import jax

# JAX's compile events: tracing, lowering and the XLA compile (or persistent-cache read).
_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")


class CompileClock:
  """JAX compile seconds (trace + lower + XLA) spent while the context is active, any thread."""

  def __init__(self):
    self.seconds = 0.0

  def _on_event(self, event: str, seconds: float, **_) -> None:
    if event in _COMPILE_EVENTS:
      self.seconds += seconds

  def __enter__(self) -> "CompileClock":
    jax.monitoring.register_event_duration_secs_listener(self._on_event)
    return self

  def __exit__(self, *exc) -> None:
    jax.monitoring.unregister_event_duration_listener(self._on_event)


class Phases:
  """Wall seconds per phase of the main job and the JAX compile seconds spent inside each.

  ``with PHASES("training"): ...`` times a phase (re-entering a name adds to it);
  :meth:`summary` is the table the main job prints at its end.
  """

  def __init__(self):
    self.wall: dict[str, float] = {}
    self.compile: dict[str, float] = {}
    self._current: str | None = None
    jax.monitoring.register_event_duration_secs_listener(self._on_event)

  def _on_event(self, event: str, seconds: float, **_) -> None:
    if self._current is not None and event in _COMPILE_EVENTS:
      self.compile[self._current] = self.compile.get(self._current, 0.0) + seconds

  @contextlib.contextmanager
  def __call__(self, name: str) -> Iterator[None]:
    outer, self._current = self._current, name
    start = time.perf_counter()
    try:
      yield
    finally:
      self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - start
      self._current = outer

  def reset(self) -> None:
    self.wall.clear()
    self.compile.clear()

  def summary(self) -> str:
    """One line per phase: wall seconds, of which compiling (JAX trace + lower + XLA)."""
    lines = [f"{'phase':<10} {'wall s':>8} {'compile s':>10}"]
    for name, wall in self.wall.items():
      lines.append(f"{name:<10} {wall:8.1f} {self.compile.get(name, 0.0):10.1f}")
    lines.append(f"{'total':<10} {sum(self.wall.values()):8.1f} "
                 f"{sum(self.compile.values()):10.1f}")
    return "\n".join(lines)


PHASES = Phases()
