"""Attack directions: how per-task losses become one ascent direction (reference-spec §4).

==================  ==========================================================================
module              contents
==================  ==========================================================================
``base``            :class:`Direction`, :func:`per_task_grads`, the registry (:func:`register`,
                    :func:`registered`, :func:`by_name`)
``plain``           Single-x, Total, SignTotal
``gbmta``           GB-MTA (DGBA)
``balancing``       the balancing rules as pure functions of a (T, n) gradient matrix (a leaf)
``balanced``        those rules as registered directions (mgda, pcgrad, imtl_g, cagrad, nash_mtl,
                    upgrad, aligned_mtl)
``switched``        :class:`Switched`: one compiled attack serving Single-x, Total and GB-MTA
``random_task``     :class:`RandomTask`: each example attacks one task drawn at random
==================  ==========================================================================

Every module imports only those above it in this table; all public names are re-exported here, so
``from mtajax import directions; directions.by_name('gbmta')`` reaches every direction.
"""

from mtajax.directions import balancing
from mtajax.directions.balanced import (DIRECTIONS, IMTLG, MGDA, AlignedMTL, Balanced, CAGrad,
                                        NashMTL, PCGrad, UPGrad)
from mtajax.directions.balancing import (INACTIVE_TOL, RULES, WeightRule, active, aligned_mtl,
                                         aligned_mtl_weights, best_on_faces, cagrad,
                                         cagrad_weights, check_at_least, combine,
                                         dual_cone_weights, face_solutions, finite_rows, gram,
                                         imtl_g, imtl_g_weights, mgda, mgda_weights, nash_mtl,
                                         nash_mtl_weights, pcgrad, pcgrad_weights, random_order,
                                         upgrad, upgrad_weights)
from mtajax.directions.base import (Array, Direction, GradMethod, LossFn, Losses, by_name,
                                    per_task_grads, register, registered, task_names)
from mtajax.directions.gbmta import GBMTA, gbmta
from mtajax.directions.plain import Single, SignTotal, Total, sign_total, single, total
from mtajax.directions.switched import Switched, switchable, switched
from mtajax.directions.random_task import RandomTask, random_task
