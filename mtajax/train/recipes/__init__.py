"""Training recipes (defences), chosen by ``config.adv.mode`` through an open registry.

==================  ==========================================================================
recipe              one train step
==================  ==========================================================================
``none``            one update on the clean batch (:mod:`.clean`)
``reference``       I-FGSM examples after an extra clean update (the reference code, Q29)
``fat``             FAT's early-stopped PGD examples
``adversarial``     any attack × direction (incl. ``random_task``) × attack loss, then an update
``trades``          clean losses + β · Σ_t w_t consistency(f(x), f(x_adv)) (TRADES, per task type)
``mixed``           a ``clean_fraction`` of the batch clean, the rest attacked, one update
==================  ==========================================================================

Every attacking recipe follows the ε / step-count curriculum of :mod:`.curriculum`
(``adv.curriculum_steps``; off by default). :func:`register_recipe` adds one; :func:`validate`
checks an ``adv`` config against the trained tasks.
"""

from mtajax.train.recipes import adversarial
from mtajax.train.recipes import clean
from mtajax.train.recipes import curriculum
from mtajax.train.recipes import fat
from mtajax.train.recipes import mixed
from mtajax.train.recipes import reference
from mtajax.train.recipes import trades
from mtajax.train.recipes.base import (Context, Recipe, attack_key, by_name, check_direction,
                                       register_recipe, registered, uses_clean_step, validate)
