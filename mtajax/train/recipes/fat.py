"""``'fat'``: friendly adversarial training (Zhang et al. 2020, the paper's FAT): early-stopped PGD
examples only (``adv.tau`` steps after the first success at ``adv.margin``)."""

from __future__ import annotations

import ml_collections

from mtajax import attacks
from mtajax import directions as directions_lib
from mtajax.train.recipes import adversarial
from mtajax.train.recipes import base


def spec(adv: ml_collections.ConfigDict, num_steps: int) -> attacks.Attack:
  """Early-stopped PGD, step ε/K unless ``adv.step_size``."""
  options = {} if adv.step_size is None else {"step_size": adv.step_size}
  return attacks.Attack("early_stopped_pgd", directions_lib.by_name(adv.direction), num_steps,
                        {**options, "tau": adv.tau, "margin": adv.margin})


base.register_recipe("fat", adversarial.attack_step(spec), spec=spec, clean_step=False)
