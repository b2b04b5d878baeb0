"""``'reference'``: the reference code's adversarial training (spec §10): ``adv.num_steps``-step
I-FGSM along ``adv.direction``, after an extra clean update by default (Q29)."""

from __future__ import annotations

import ml_collections

from mtajax import attacks
from mtajax import directions as directions_lib
from mtajax.train.recipes import adversarial
from mtajax.train.recipes import base


def spec(adv: ml_collections.ConfigDict, num_steps: int) -> attacks.Attack:
  """I-FGSM (PGD from the clean input), step ε/K unless ``adv.step_size``."""
  options = {} if adv.step_size is None else {"step_size": adv.step_size}
  return attacks.Attack("pgd", directions_lib.by_name(adv.direction), num_steps, options)


base.register_recipe("reference", adversarial.attack_step(spec), spec=spec, clean_step=True)
