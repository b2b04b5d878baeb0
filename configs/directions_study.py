"""Directions × attack losses on the quickstart's models (AS, layout 41, IND), PGD and APGD, ε 4, 8.

    python -m mtajax.run train --config configs/directions_study.py
    XLA_FLAGS=--xla_backend_optimization_level=0 python -m mtajax.run sweep --config configs/directions_study.py
    python -m mtajax.run report --config configs/directions_study.py
    python -m mtajax.run sweep --config configs/directions_study.py:smoke   # CI-sized, minutes

Is GB-MTA still the strongest multi-task direction against the gradient-balancing rules, and
which attack loss helps most? The report's "Directions × attack losses" section answers from the
records. Kept out of the quickstart, which must stay fast.
"""

from configs import quickstart

DIRECTIONS = ("total", "gbmta", "mgda", "pcgrad", "imtl_g", "cagrad", "nash_mtl")
LOSSES = ("default", "segpgd", "cospgd", "masked_ce", "js")


def get_config(arg: str | None = None):
  c = quickstart.get_config(arg)
  c.workdir = c.workdir.replace("quickstart", "directions_study")
  c.attacks = ("pgd", "apgd")
  c.directions, c.attack_losses = DIRECTIONS, LOSSES
  c.eps = (4.0, 8.0)
  c.robust.enabled = False  # the study compares grid cells; the quickstart runs the robust suite
  c.eval_max_batches = 4  # the first 64 test images: 70 attack programs per model compile
  if "smoke" in (arg or ""):
    c.directions, c.attack_losses = ("gbmta", "mgda"), ("default", "segpgd")
  return c
