"""Attacks on multi-task models: FGSM/FGM, PGD (I-FGSM), APGD (reference and AutoAttack) and
Auto-SAGE, in the L∞ and L2 threat models, untargeted or targeted.

Each attack is a pure, jit-compiled function of a loss function, a batch and a direction from
:mod:`mtajax.directions`; ε, step sizes, bounds and the arrays inside the loss function (model
weights) are traced (sweeping ε or rebuilding the loss per batch never recompiles), the iterations
run in one ``jax.lax.scan``.
"""

from mtajax.attacks.apgd import apgd
from mtajax.attacks.apgd import checkpoints
from mtajax.attacks.auto_sage import auto_sage
from mtajax.attacks.common import AttackResult
from mtajax.attacks.common import Context
from mtajax.attacks.fgsm import fgsm
from mtajax.attacks.pgd import pgd
from mtajax.attacks.threat import NORMS

ATTACKS = {"fgsm": fgsm, "pgd": pgd, "apgd": apgd, "auto_sage": auto_sage}


def by_name(name: str):
  """The attack function called ``name`` (fgsm, pgd, apgd, auto_sage)."""
  if name not in ATTACKS:
    raise ValueError(f"unknown attack {name!r}; use one of {', '.join(ATTACKS)}.")
  return ATTACKS[name]
