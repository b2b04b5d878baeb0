"""An ε and step-count curriculum for every attacking recipe.

Over ``adv.curriculum_steps`` train steps (0 = off, the default) the ramp fraction grows linearly
from ``adv.curriculum_start`` to 1: ``r(s) = start + (1 − start)·min(s / curriculum_steps, 1)``.
ε is ``adv.eps · r(s)`` (traced: no recompile). The step count takes ``adv.curriculum_levels``
values ``max(1, round(K · (start + (1 − start)·l / (L − 1))))``, l = 0 … L − 1 (L = 1: always K),
the value at the grid point below the current progress; every step count is compiled into the one
train step program and ``lax.switch`` runs the current one, so a run compiles one program. The
default step size ε/K follows both.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np


def validate(adv: ml_collections.ConfigDict) -> None:
  """One-line errors for curriculum fields out of range."""
  steps, start, levels = adv.curriculum_steps, adv.curriculum_start, adv.curriculum_levels
  if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
    raise ValueError(f"adv.curriculum_steps must be an int >= 0 (0 = no curriculum); got "
                     f"{steps!r}.")
  if isinstance(start, bool) or not isinstance(start, (int, float)) or not 0 <= start <= 1:
    raise ValueError(f"adv.curriculum_start must be a fraction in [0, 1]; got {start!r}.")
  if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
    raise ValueError(f"adv.curriculum_levels must be an int >= 1 (1 = ramp ε only); got "
                     f"{levels!r}.")


def fraction(adv: ml_collections.ConfigDict, step: jax.Array) -> jax.Array:
  """The ramp fraction r(step) in [curriculum_start, 1] (module doc)."""
  progress = jnp.minimum(jnp.asarray(step, jnp.float32) / adv.curriculum_steps, 1.0)
  return adv.curriculum_start + (1.0 - adv.curriculum_start) * progress


def step_counts(adv: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The step count of each level l = 0 … curriculum_levels − 1 (module doc)."""
  levels, start, k = adv.curriculum_levels, adv.curriculum_start, adv.num_steps
  if levels == 1:
    return (k,)
  return tuple(max(1, round(k * (start + (1 - start) * l / (levels - 1)))) for l in range(levels))


def level(adv: ml_collections.ConfigDict, step: jax.Array) -> jax.Array:
  """The level of ``step``: the grid point at or below its progress (int32)."""
  progress = jnp.minimum(jnp.asarray(step, jnp.float32) / adv.curriculum_steps, 1.0)
  return jnp.floor(progress * (adv.curriculum_levels - 1)).astype(jnp.int32)


def run(adv: ml_collections.ConfigDict, step: jax.Array,
        attack: Callable[[Any, int], jax.Array]) -> jax.Array:
  """``attack(eps, num_steps)`` at the curriculum's ε and step count of ``step``."""
  if not adv.curriculum_steps:
    return attack(adv.eps, adv.num_steps)
  eps = adv.eps * fraction(adv, step)
  counts = step_counts(adv)
  distinct = sorted(set(counts))
  if len(distinct) == 1:
    return attack(eps, distinct[0])
  branch = jnp.asarray(np.array([distinct.index(c) for c in counts], np.int32))[level(adv, step)]
  return jax.lax.switch(branch, [functools.partial(lambda k, e: attack(e, k), k)
                                 for k in distinct], eps)
