"""Clean and adversarial training of multi-task models, Orbax checkpoints and ``load_model``."""

from mtajax.train.checkpoint import Checkpointer
from mtajax.train.config import default_config
from mtajax.train.config import fat_config
from mtajax.train.fat import early_stopped_pgd
from mtajax.train.load import LoadedModel
from mtajax.train.load import load_model
from mtajax.train.loop import TrainResult
from mtajax.train.loop import train
from mtajax.train.optim import learning_rate
from mtajax.train.optim import make_optimizer
from mtajax.train.step import make_train_step
