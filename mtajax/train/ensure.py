"""The models of a run: each layout's training config, its id and its trained model on disk.

A run config (``configs/*.py``) names layouts; :func:`train_config` derives the training config of
one (clean or adversarially trained), :func:`model_id` names its folder
``<workdir>/models/<model_id>`` and :func:`ensure_trained` returns it trained to
``train.num_steps``, training what is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import ml_collections

from mtajax import locks
from mtajax import models
from mtajax.train import checkpoint
from mtajax.train import config as train_config_lib
from mtajax.train import load
from mtajax.train import loop


def train_config(config: ml_collections.ConfigDict, layout: Any,
                 adversarial: bool = False) -> ml_collections.ConfigDict:
  """The training config of one model of the grid."""
  t = ml_collections.ConfigDict(config.train.to_dict())
  t.layout = layout
  if adversarial:
    t.adv.update(config.advtrain.to_dict())
  return t


def adv_label(t: ml_collections.ConfigDict) -> str:
  """'none' for clean training, else e.g. 'reference:gbmta:eps8'."""
  return "none" if t.adv.mode == "none" else f"{t.adv.mode}:{t.adv.direction}:eps{t.adv.eps:g}"


def model_id(t: ml_collections.ConfigDict) -> str:
  """The folder name of the model of ``t``: e.g. 'nyuv2-resnet34-L3', adversarially trained
  'nyuv2-resnet34-L3-reference_gbmta_eps8'."""
  label = adv_label(t)
  suffix = "" if label == "none" else "-" + label.replace(":", "_")
  return f"{t.dataset}-{t.backbone}-L{t.layout}{suffix}"


def ensure_trained(t: ml_collections.ConfigDict, workdir: Path,
                   mesh: jax.sharding.Mesh | None = None) -> load.LoadedModel:
  """The model of ``t`` at step ``t.num_steps``, trained (or trained further) if it is not there.

  A checkpoint of another model (``train.config.identity``) is refused, never overwritten. Training
  resumes from the latest intact step; a damaged final step is an error naming what to delete.
  Runs under the model's lock (``mtajax.locks.model``): a second run on the workdir waits for the
  model the first is training and then reuses it.
  """
  model_dir = workdir / "models" / model_id(t)
  with locks.model(model_dir):
    return _ensure_trained(t, model_dir, mesh)


def _ensure_trained(t: ml_collections.ConfigDict, model_dir: Path,
                    mesh: jax.sharding.Mesh | None) -> load.LoadedModel:
  ckpt = model_dir / "checkpoints"
  step = checkpoint.latest_step(ckpt)  # None: no checkpoint (or killed before the first save).
  if step is not None:
    try:
      train_config_lib.check_same_model(checkpoint.restore_meta(ckpt)[1]["config"], t, model_dir)
    except checkpoint.DamagedCheckpointError:
      if step >= t.num_steps:
        raise
      # Training checks the model and falls back to the latest intact step.
  if step is None or step < t.num_steps:
    print(f"training {model_id(t)} ({t.num_steps} steps)")
    loop.train(t, model_dir, mesh)
  try:
    return load.load_model(ckpt, t.num_steps)
  except ValueError:
    if step is None or step <= t.num_steps:
      raise
    raise ValueError(f"model {model_id(t)} in {model_dir} is trained to {step} steps and its step "
                     f"{t.num_steps} is not kept; set --config.train.num_steps={step} or use "
                     "another workdir.") from None


def record_fields(t: ml_collections.ConfigDict, layout: models.Layout) -> dict[str, Any]:
  """The fields of a stored record (``mtajax.results.Record``) that describe the model of ``t``."""
  return {"model": model_id(t), "dataset": t.dataset, "backbone": t.backbone,
          "layout_idx": t.layout if isinstance(t.layout, int) else None, "layout": str(layout),
          "sharing_level": models.sharing_level(layout), "adv_training": adv_label(t),
          "tasks": list(t.tasks)}
