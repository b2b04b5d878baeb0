"""``'mixed'``: each batch part clean, part adversarial (the CosPGD authors' half-and-half recipe).

The first ``round(B · adv.clean_fraction)`` examples stay clean (0.5: half), the others are
attacked by the ``'adversarial'`` recipe's attack (any attack, direction and attack loss); one
update on the mixed batch.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax.numpy as jnp
import ml_collections

from mtajax.train.recipes import adversarial
from mtajax.train.recipes import base


def num_clean(batch_size: int, clean_fraction: float) -> int:
  """The clean examples of a batch: ``round(batch_size · clean_fraction)``."""
  return round(batch_size * clean_fraction)


def step(ctx: base.Context, state: base.State, batch, clean_rng, adv_rng):
  """Attacks the examples after the clean part, then one update on the mixed batch."""
  del clean_rng
  x = batch["image"]
  k = num_clean(x.shape[0], ctx.adv.clean_fraction)
  if k < x.shape[0]:
    attacked = {name: v[k:] for name, v in batch.items()}
    x_adv = ctx.attack(state, attacked, functools.partial(adversarial.spec, ctx.adv),
                       base.attack_key(adv_rng))
    x = jnp.concatenate([x[:k], x_adv])
  state, loss, losses = ctx.train_update(state, x, batch, adv_rng)
  return state, {"loss": loss, **losses}


def check(adv: ml_collections.ConfigDict, task_names: Sequence[str]) -> None:
  """A clean fraction in [0, 1] and the adversarial recipe's checks."""
  f = adv.clean_fraction
  if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f <= 1:
    raise ValueError(f"adv.clean_fraction must be in [0, 1] (0.5 = half the batch clean); got "
                     f"{f!r}.")
  adversarial.check(adv, task_names)


base.register_recipe("mixed", step, spec=adversarial.spec, check=check)
