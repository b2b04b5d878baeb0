"""Train loop: resumable training with periodic evaluation, JSON-lines metrics and a progress bar.

``train(config, workdir)`` writes ``workdir/metrics.jsonl`` (one JSON object per logged event) and
Orbax checkpoints to ``workdir/checkpoints``. If that folder already holds a checkpoint, training
resumes from the latest complete one (same config required) and reaches the same parameters as an
uninterrupted run: batches are a pure function of (seed, step) and the PRNG key is checkpointed.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import os
from pathlib import Path
from typing import Any

import jax
import ml_collections
from flax import nnx
import numpy as np
import tqdm

from mtajax import evaluate as evaluate_lib
from mtajax import models
from mtajax import parallel
from mtajax.data import pipeline
from mtajax.tasks import base
from mtajax.train import assemble
from mtajax.train import checkpoint
from mtajax.train import optim
from mtajax.train import step as step_lib


@dataclasses.dataclass
class TrainResult:
  """Final train state, the last evaluation ``{task: {metric: value}}`` and the layout trained."""
  state: step_lib.State
  eval_metrics: dict[str, dict[str, float]]
  layout: models.Layout


def _data_dir(config: ml_collections.ConfigDict) -> str:
  return os.path.expanduser(config.data_dir)


def _predict(apply: step_lib.Apply, state: tuple[Any, Any], x: jax.Array) -> dict[str, jax.Array]:
  return apply(state[0], state[1], x, train=False)[0]


class _MetricsLog:
  """Appends JSON lines to ``workdir/metrics.jsonl`` (process 0 only)."""

  def __init__(self, path: Path):
    self.path = path

  def write(self, record: dict[str, Any]) -> None:
    if not parallel.is_writer():
      return
    with self.path.open("a") as f:
      f.write(json.dumps(record) + "\n")


def _check_finite(step: int, values: dict[str, float]) -> None:
  bad = {k: v for k, v in values.items() if not math.isfinite(v)}
  if bad:
    raise FloatingPointError(f"Non-finite training loss at step {step}: {bad}; lower config.lr or "
                             "check the labels (the last checkpoint is kept).")


def _meta(config: ml_collections.ConfigDict, layout: models.Layout, step: int,
          class_weights: np.ndarray | None) -> dict[str, Any]:
  return {"config": json.loads(config.to_json()), "layout": str(layout), "data_step": step,
          "class_weights": None if class_weights is None else class_weights.tolist()}


def _check_resume(saved: dict[str, Any], config: ml_collections.ConfigDict,
                  directory: Path) -> None:
  ignored = {"num_steps", "eval_every", "checkpoint_every", "keep_checkpoints", "progress_bar",
             "eval_max_batches", "data_dir"}
  now = json.loads(config.to_json())
  diff = sorted(k for k in set(now) | set(saved["config"])
                if k not in ignored and now.get(k) != saved["config"].get(k))
  if diff:
    raise ValueError(f"{directory} holds checkpoints of a different config (fields {diff}); use a "
                     "new workdir or the saved config.")


def train(config: ml_collections.ConfigDict, workdir: str | Path,
          mesh: jax.sharding.Mesh | None = None) -> TrainResult:
  """Trains (or resumes training) per ``config`` in ``workdir``; see the module docstring.

  With ``mesh`` (``mtajax.parallel.make_mesh``) every step runs data-parallel: the global batch
  is sharded over the mesh, the train state replicated. All processes call this; Orbax saves the
  checkpoints collectively and only process 0 writes ``metrics.jsonl``.
  """
  workdir = Path(workdir)
  if parallel.is_writer():
    workdir.mkdir(parents=True, exist_ok=True)
  ckpt_dir = workdir / "checkpoints"
  data_dir = _data_dir(config)
  train_loader = pipeline.dataset(config.dataset, data_dir, config.train_split,
                                  batch_size=config.batch_size, tasks=config.tasks, train=True,
                                  seed=config.seed, config=config.data_config)
  eval_loader = pipeline.dataset(config.dataset, data_dir, config.eval_split,
                                 batch_size=config.eval_batch_size, tasks=config.tasks,
                                 config=config.data_config)
  tasks = assemble.make_tasks(config, train_loader.class_weights)
  model = assemble.make_model(config, tasks)
  layout = models.resolve_layout(config.layout, len(tasks))
  apply, params, batch_stats = models.pure_apply(model)
  optimizer = optim.make_optimizer(config, step_lib.updates_per_step(config.adv))
  state = step_lib.init_state(nnx.to_pure_dict(params), nnx.to_pure_dict(batch_stats),
                              optimizer, config.seed)

  start = 0
  if checkpoint.latest_step(ckpt_dir) is not None:
    start, saved = checkpoint.restore_meta(ckpt_dir)
    _check_resume(saved, config, ckpt_dir)
    state = checkpoint.restore_state(ckpt_dir, start, state)
  if mesh is not None:
    state = parallel.replicate(state, mesh)

  train_step = step_lib.make_train_step(apply, tasks, optimizer, config)
  predict = functools.partial(_predict, apply)  # One function object: evaluation compiles once.
  log = _MetricsLog(workdir / "metrics.jsonl")
  lr = optim.learning_rate(config)
  eval_metrics: dict[str, dict[str, float]] = {}
  batches = train_loader.iterate(start)
  parallel.sync("mtajax-train-resume-checked")  # No process creates ckpt_dir before all looked.
  checkpointer = checkpoint.Checkpointer(ckpt_dir, config.keep_checkpoints)
  bar = tqdm.tqdm(total=config.num_steps, initial=start,
                  disable=not (config.progress_bar and parallel.is_writer()),
                  desc="train", dynamic_ncols=True)
  try:
    for step in range(start, config.num_steps):
      batch = next(batches)
      if mesh is not None:
        batch = parallel.shard_batch(batch, mesh)
      state, values = train_step(state, batch)
      values = {k: float(v) for k, v in jax.device_get(values).items()}
      _check_finite(step, values)
      done = step + 1
      bar.update(1)
      bar.set_postfix(loss=f"{values['loss']:.4f}")
      log.write({"step": done, "split": "train", "lr": float(lr(step)), **values})
      if done % config.eval_every == 0 or done == config.num_steps:
        eval_metrics = evaluate_lib.evaluate(
            predict, (state["params"], state["batch_stats"]),
            itertools.islice(eval_loader, config.eval_max_batches), tasks, mesh=mesh).metrics
        log.write({"step": done, "split": config.eval_split, **eval_metrics})
      if done % config.checkpoint_every == 0 or done == config.num_steps:
        checkpointer.save(done, state, _meta(config, layout, done, train_loader.class_weights))
  finally:
    bar.close()
    checkpointer.wait()
    checkpointer.close()
  return TrainResult(state, eval_metrics, layout)
