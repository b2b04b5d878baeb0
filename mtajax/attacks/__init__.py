"""Attacks on multi-task models: FGSM/FGM, PGD (I-FGSM), APGD (reference and AutoAttack), Auto-SAGE
and FAT's early-stopped PGD, in the L∞ and L2 threat models, untargeted or targeted.

Each attack is a pure function of a loss function, a batch and a direction from
:mod:`mtajax.directions`, written as pure pieces (a start, evaluations, a step rule's update) that
:mod:`mtajax.attacks.loop` drives with ``lax.scan`` or a Python loop; ε, step sizes, bounds and the
arrays inside the loss function (model weights) are traced (sweeping ε or rebuilding the loss per
batch never recompiles). :class:`Attack` is one attack fully specified.
"""

from mtajax.attacks.apgd import apgd
from mtajax.attacks.apgd import autoattack_schedule
from mtajax.attacks.apgd import checkpoints
from mtajax.attacks.auto_sage import auto_sage
from mtajax.attacks.common import AttackResult
from mtajax.attacks.common import Context
from mtajax.attacks.early_stopped import early_stopped_pgd
from mtajax.attacks.fgsm import fgsm
from mtajax.attacks.loop import LOOPS
from mtajax.attacks.pgd import pgd
from mtajax.attacks.spec import ATTACKS
from mtajax.attacks.spec import Attack
from mtajax.attacks.spec import by_name
from mtajax.attacks.threat import NORMS
