"""Tasks: dense-prediction losses, streaming metrics, ARP and attack transferability."""

from mtajax.tasks import attack_losses
from mtajax.tasks import metrics
from mtajax.tasks.base import Task
from mtajax.tasks.depth import Depth
from mtajax.tasks.l1 import MaskedL1
from mtajax.tasks.loss_fn import make_loss_fn
from mtajax.tasks.loss_fn import total_loss
from mtajax.tasks.normal import Normal
from mtajax.tasks.relative import Arp
from mtajax.tasks.relative import arp
from mtajax.tasks.relative import relative_loss
from mtajax.tasks.relative import relative_performance
from mtajax.tasks.relative import transferability
from mtajax.data.resize import nearest_indices
from mtajax.tasks.resize import resize_nearest
from mtajax.tasks.segmentation import Segmentation
from mtajax.tasks.task_sets import nyuv2_tasks
from mtajax.tasks.task_sets import synthetic_tasks
from mtajax.tasks.task_sets import taskonomy_tasks
