"""``'adversarial'``: adversarial training (Madry et al.; PIR-AT's APGD for segmentation) whose
inner maximisation is any registered attack, direction and attack loss.

Config: ``adv.attack`` (``'pgd'``, ``'apgd'``, ``'fgsm'``, …), ``adv.direction`` (``gbmta``,
``total``, ``single_<task>``, a balancing rule, ``random_task``), ``adv.attack_loss`` (a name of
:mod:`mtajax.tasks.attack_losses`), ``adv.attack_options`` (the attack's other static options, e.g.
``random_start=True``), ``adv.eps``, ``adv.num_steps``, ``adv.step_size``; ``adv.clean_step=True``
adds a clean update first. :func:`attack_step` is the step the reference and FAT recipes share.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import ml_collections

from mtajax import attacks
from mtajax import directions as directions_lib
from mtajax.tasks import attack_losses
from mtajax.train.recipes import base


def spec(adv: ml_collections.ConfigDict, num_steps: int) -> attacks.Attack:
  """The configured attack with ``num_steps`` iterations."""
  options = dict(adv.attack_options)
  if adv.step_size is not None and adv.attack != "fgsm":
    options["step_size"] = adv.step_size
  return attacks.Attack(adv.attack, directions_lib.by_name(adv.direction), num_steps, options,
                        adv.attack_loss)


def check(adv: ml_collections.ConfigDict, task_names: Sequence[str]) -> None:
  """The attack, its options and the attack loss exist."""
  attacks.by_name(adv.attack)
  attack_losses.canonical(adv.attack_loss, task_names)
  spec(adv, adv.num_steps)


def attack_step(make_spec: base.Spec) -> base.Step:
  """A step that attacks the batch with ``make_spec(adv, K)`` and updates on the adversarial
  examples (after a clean update when ``uses_clean_step``)."""
  def step(ctx: base.Context, state: base.State, batch, clean_rng, adv_rng):
    metrics = {}
    if base.uses_clean_step(ctx.adv):
      state, metrics["clean_loss"], _ = ctx.train_update(state, batch["image"], batch, clean_rng)
    x_adv = ctx.attack(state, batch, functools.partial(make_spec, ctx.adv),
                       base.attack_key(adv_rng))
    state, loss, losses = ctx.train_update(state, x_adv, batch, adv_rng)
    return state, metrics | {"loss": loss, **losses}
  return step


base.register_recipe("adversarial", attack_step(spec), spec=spec, clean_step=False, check=check)
