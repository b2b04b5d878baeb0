"""``'none'``: clean training (spec §9), one update on the clean batch."""

from __future__ import annotations

from mtajax.train.recipes import base


def step(ctx: base.Context, state: base.State, batch, clean_rng, adv_rng):
  """One update on the weighted task losses of the clean batch."""
  del adv_rng
  state, loss, losses = ctx.train_update(state, batch["image"], batch, clean_rng)
  return state, {"loss": loss, **losses}


base.register_recipe("none", step)
