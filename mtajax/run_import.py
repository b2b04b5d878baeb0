"""The ``import`` mode: a TreeMTL / DGBA PyTorch checkpoint as a final model of a run's workdir.

The converted model is stored where the sweep keeps the model of that layout
(``<workdir>/models/<model_id>/checkpoints``) as an ordinary training checkpoint at step
``train.num_steps`` whose meta record is the config the sweep derives for that layout, so
``mtajax.train.ensure.ensure_trained`` finds it complete (it is never resumed or retrained) and
``attack``, ``sweep`` and ``report`` use it like any trained model. The optimiser state is the
freshly initialised one (``load_model`` restores whole train states); ``imported_from`` names the
file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ml_collections
from flax import nnx

from mtajax import locks
from mtajax import models
from mtajax.data import pipeline
from mtajax.train import assemble
from mtajax.train import checkpoint
from mtajax.train import ensure
from mtajax.train import loop
from mtajax.train import optim
from mtajax.train import step as step_lib


def checkpoint_layout(config: ml_collections.ConfigDict, ckpt: models.torch_import.Checkpoint
                      ) -> Any:
  """The entry of ``config.layouts`` the checkpoint was trained with."""
  t = config.train
  if ckpt.layout is None:
    if len(config.layouts) != 1:
      raise ValueError("The checkpoint stores no layout; set --config.layouts='(IDX,)' to the "
                       "layout it was trained with.")
    return config.layouts[0]
  for layout in config.layouts:
    if models.fine_layout(t.backbone, layout, len(t.tasks)).blocks == ckpt.layout.blocks:
      return layout
  raise ValueError(f"The checkpoint's layout {ckpt.layout} is none of config.layouts "
                   f"{tuple(config.layouts)} on {t.backbone}; add its index to --config.layouts.")


def _class_weights(t: ml_collections.ConfigDict):
  if t.dataset != "taskonomy":
    return None
  return pipeline.dataset(t.dataset, os.path.expanduser(t.data_dir), t.train_split,
                          batch_size=1, tasks=t.tasks).class_weights


def import_checkpoint(config: ml_collections.ConfigDict) -> Path:
  """Converts ``config.checkpoint`` and stores it in ``config.workdir``; returns its folder."""
  if not config.checkpoint:
    raise ValueError("import needs --config.checkpoint=PATH (a TreeMTL / DGBA .model or .pth "
                     "file, or an .npz of its state_dict).")
  source = Path(os.path.expanduser(config.checkpoint)).absolute()
  ckpt = models.read_checkpoint(source)
  t = ensure.train_config(config, checkpoint_layout(config, ckpt))
  ckpt_dir = Path(config.workdir) / "models" / ensure.model_id(t) / "checkpoints"
  with locks.model(ckpt_dir.parent):
    _store(t, ckpt, source, ckpt_dir)
  return ckpt_dir


def _store(t: ml_collections.ConfigDict, ckpt: models.torch_import.Checkpoint, source: Path,
           ckpt_dir: Path) -> None:
  """Stores the converted ``ckpt`` in ``ckpt_dir`` (refused where a model is)."""
  if ckpt_dir.exists():
    raise ValueError(f"{ckpt_dir.parent} already holds a model; use another workdir or delete "
                     "it.")
  class_weights = _class_weights(t)
  tasks = assemble.make_tasks(t, class_weights)
  layout = models.resolve_layout(t.layout, len(tasks))
  model = models.from_torch(ckpt, t.backbone, {task.name: task.channels for task in tasks},
                            layout)
  _, params, batch_stats = models.pure_apply(model)
  optimizer = optim.make_optimizer(t, step_lib.updates_per_step(t.adv))
  state = step_lib.init_state(nnx.to_pure_dict(params), nnx.to_pure_dict(batch_stats), optimizer,
                              t.seed)
  meta = {**loop.checkpoint_meta(t, layout, t.num_steps, class_weights),
          "imported_from": str(source)}
  saver = checkpoint.Checkpointer(ckpt_dir, max_to_keep=1)
  try:
    saver.save(t.num_steps, state, meta)
    saver.wait()
  finally:
    saver.close()
