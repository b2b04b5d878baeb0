"""L∞ attacks on multi-task models: FGSM, PGD (I-FGSM), APGD and Auto-SAGE.

Each attack is a pure, jit-compiled function of a loss function, a batch and a direction from
:mod:`mtajax.directions`; ε, step sizes and bounds are traced (sweeping ε never recompiles), the
iterations run in one ``jax.lax.scan``.
"""

from mtajax.attacks.apgd import apgd
from mtajax.attacks.apgd import checkpoints
from mtajax.attacks.auto_sage import auto_sage
from mtajax.attacks.common import AttackResult
from mtajax.attacks.fgsm import fgsm
from mtajax.attacks.pgd import pgd

ATTACKS = {"fgsm": fgsm, "pgd": pgd, "apgd": apgd, "auto_sage": auto_sage}


def by_name(name: str):
  """The attack function called ``name`` (fgsm, pgd, apgd, auto_sage)."""
  if name not in ATTACKS:
    raise ValueError(f"unknown attack {name!r}; use one of {', '.join(ATTACKS)}.")
  return ATTACKS[name]
