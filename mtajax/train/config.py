"""Training configuration: the reference recipe of spec §9 on the embedded benchmark by default."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Mapping

import ml_collections

# Keys that say how far and how visibly to run, not which model: a checkpoint, a resume and a
# result record stay valid when they change (a model trained longer gets new records, through the
# step count it was trained to; see `identity`).
RUN_ONLY_KEYS = ("num_steps", "data_dir", "progress_bar", "log_every", "eval_every", "eval_split",
                 "eval_batch_size", "eval_max_batches", "checkpoint_every", "keep_checkpoints")


def default_config() -> ml_collections.ConfigDict:
  """Default training config (reference NYUv2 recipe: Adam(0.5, 0.999), L2 1e-4, StepLR)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Data: mtajax.data.pipeline.dataset(name, data_dir, ...); synthetic = the embedded benchmark.
  c.dataset = "synthetic"
  c.data_dir = "~/tensorflow_datasets"
  c.data_config = ml_collections.config_dict.placeholder(dict)  # synthetic builder kwargs
  c.tasks = ("segment_semantic", "normal", "depth_zbuffer")
  c.train_split = "train"
  c.eval_split = "test"
  c.metric_definition = "reference"
  # Model: mtajax.models.build_model(backbone, tasks, layout, width=...).
  c.backbone = "small"
  c.layout = 0  # index into enumerate_layouts(T), or a layout string
  c.width = ml_collections.config_dict.placeholder(int)
  # Optimisation (spec §9, NYUv2 launch values).
  c.batch_size = 16
  c.num_steps = 20_000
  c.lr = 1e-3
  c.lr_decay_every = 4000
  c.lr_decay_rate = 0.5
  c.b1 = 0.5
  c.b2 = 0.999
  c.adam_eps = 1e-8
  c.weight_decay = 1e-4  # coupled L2, added to the gradient
  c.task_weights = ml_collections.ConfigDict()  # task name -> loss weight (default 1)
  # Evaluation, logging, checkpoints (spec §9: every 200 iterations).
  c.eval_every = 200
  c.eval_batch_size = 8
  c.eval_max_batches = ml_collections.config_dict.placeholder(int)  # None = whole split
  c.checkpoint_every = 200
  c.keep_checkpoints = 3
  c.progress_bar = True
  c.log_every = 50  # metrics.jsonl gets every step's losses, fetched from the device every N steps
  # Adversarial training: the recipe (mtajax.train.recipes) 'none' | 'reference' (I-FGSM, spec
  # §10) | 'fat' (early-stopped PGD) | 'adversarial' | 'trades' | 'mixed' | a registered one.
  c.adv = ml_collections.ConfigDict()
  c.adv.mode = "none"
  c.adv.direction = "gbmta"  # single_<task> | total | sign_total | gbmta | random_task | mgda ...
  c.adv.eps = 8.0
  c.adv.num_steps = 10  # reference I-FGSM steps; the paper's FAT uses K = 20
  c.adv.step_size = ml_collections.config_dict.placeholder(float)  # None = eps / num_steps
  c.adv.clean_step = ml_collections.config_dict.placeholder(bool)  # None = yes for 'reference'
  c.adv.tau = 20  # FAT: steps taken after the first success
  c.adv.margin = 0.5  # FAT: mean relative loss increase that counts as success
  c.adv.update(copy.deepcopy(RECIPE_DEFAULTS))
  return c


# The adv fields of the recipes after 'reference' and 'fat'. `identity` leaves each out while it
# has its default value here, so models trained before these fields existed keep their identity.
RECIPE_DEFAULTS = {
    "attack": "pgd",  # adversarial, mixed, trades: the inner attack (mtajax.attacks.ATTACKS)
    "attack_loss": "default",  # adversarial, mixed: the loss it ascends (tasks.attack_losses)
    "attack_options": {},  # the attack's other static options, e.g. random_start=True
    "beta": 6.0,  # trades: weight of the consistency term (TRADES's 6)
    "consistency_weights": {},  # trades: task name -> weight of its consistency (default 1)
    "clean_fraction": 0.5,  # mixed: fraction of each batch kept clean
    "curriculum_steps": 0,  # ε and step-count ramp over this many train steps (0 = off)
    "curriculum_start": 0.0,  # the ramp's first fraction of ε and of the step count
    "curriculum_levels": 4,  # step counts the ramp takes (1 = ε only; compiled into one program)
}


def fat_config() -> ml_collections.ConfigDict:
  """The paper's FAT GB-MTA (K = τ = 20, adversarial examples only)."""
  c = default_config()
  c.adv.mode = "fat"
  c.adv.num_steps = 20
  return c


def identity(config: ml_collections.ConfigDict | Mapping[str, Any]) -> dict[str, Any]:
  """What defines a trained model: the training config (JSON form) minus ``RUN_ONLY_KEYS`` (and
  the ``adv`` fields of :data:`RECIPE_DEFAULTS` at their defaults).

  The one definition used by the sweep (is this model trained?), the train loop's resume check
  and the results' record keys (together with the step count the model was trained to).
  """
  values = json.loads(config.to_json() if hasattr(config, "to_json") else json.dumps(config))
  if isinstance(values.get("adv"), dict):
    values["adv"] = {k: v for k, v in values["adv"].items()
                     if not (k in RECIPE_DEFAULTS and v == RECIPE_DEFAULTS[k])}
  return {k: v for k, v in values.items() if k not in RUN_ONLY_KEYS}


def check_same_model(saved: Mapping[str, Any], config: ml_collections.ConfigDict,
                     directory: str | Path) -> None:
  """Raises if ``directory`` holds checkpoints of another model than ``config`` trains."""
  now, before = identity(config), identity(saved)
  diff = sorted(k for k in set(now) | set(before) if now.get(k) != before.get(k))
  if diff:
    raise ValueError(f"{directory} holds a model trained with a different config (fields {diff}); "
                     "use another workdir or the saved config.")
