"""Friendly adversarial training (FAT, Zhang et al. 2020): its inner attack is the early-stopped
PGD of :mod:`mtajax.attacks.early_stopped`."""

from __future__ import annotations

from typing import Any

import jax

from mtajax.attacks import early_stopped
from mtajax.attacks.early_stopped import relative_increase  # noqa: F401  (public name)


def early_stopped_pgd(loss_fn, x0: jax.Array, labels: Any, **kwargs: Any
                      ) -> tuple[jax.Array, jax.Array]:
  """:func:`mtajax.attacks.early_stopped.early_stopped_pgd` as ``(x_adv, steps taken)``."""
  result = early_stopped.early_stopped_pgd(loss_fn, x0, labels, **kwargs)
  return result.x_adv, result.best_step
