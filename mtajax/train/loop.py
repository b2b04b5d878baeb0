"""Train loop: resumable training with periodic evaluation, JSON-lines metrics and a progress bar.

``train(config, workdir)`` writes ``workdir/metrics.jsonl`` (one JSON object per train step and per
evaluation; the step losses are fetched from the device every ``config.log_every`` steps, so there
is no host sync per step) and Orbax checkpoints to ``workdir/checkpoints``. If that folder already
holds a checkpoint, training resumes from the latest complete and intact one (same model required:
``config.identity``; damaged later steps are renamed ``<step>.damaged``, saying so) and reaches the
same parameters as an uninterrupted run: batches are a pure function of (seed, step) and the PRNG
key is checkpointed. A resumed run logs each step once.
"""

from __future__ import annotations

import dataclasses
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
from mtajax import locks
from mtajax import models
from mtajax import parallel
from mtajax import results
from mtajax.data import pipeline
from mtajax.tasks import base
from mtajax.train import assemble
from mtajax.train import checkpoint
from mtajax.train import config as config_lib
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


class _MetricsLog:
  """``workdir/metrics.jsonl`` (process 0 only): one JSON line per logged event.

  On resume from checkpoint step ``start`` the records after ``start`` (logged by the killed run,
  about to be logged again) and a torn last line are dropped, once, by an atomic rewrite.
  """

  def __init__(self, path: Path, start: int):
    self.path = path
    if not (parallel.is_writer() and path.exists()):
      return
    records = self.read(path)
    kept = [r for r in records if r.get("step", 0) <= start]
    if len(kept) < len(path.read_text().splitlines()):
      results.write_lines(path, [json.dumps(r) for r in kept])

  @staticmethod
  def read(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics file, without a torn line (a run killed mid-write)."""
    records = []
    for line in path.read_text().splitlines():
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        continue
    return records

  def write(self, records: list[dict[str, Any]]) -> None:
    if records and parallel.is_writer():
      with self.path.open("a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))


def _check_finite(step: int, values: dict[str, float]) -> None:
  bad = {k: v for k, v in values.items() if not math.isfinite(v)}
  if bad:
    raise FloatingPointError(f"Non-finite training loss at step {step}: {bad}; lower config.lr or "
                             "check the labels (the last checkpoint is kept).")


def checkpoint_meta(config: ml_collections.ConfigDict, layout: models.Layout, step: int,
                    class_weights: np.ndarray | None) -> dict[str, Any]:
  """The meta record saved with each checkpoint: the training config, layout, data position and
  class weights (``checkpoint.restore_meta`` reads it back)."""
  return {"config": json.loads(config.to_json()), "layout": str(layout), "data_step": step,
          "class_weights": None if class_weights is None else class_weights.tolist()}


def _set_aside(ckpt_dir: Path, damaged: list[int], start: int) -> None:
  """Renames each damaged step to a free ``<step>.damaged[N]`` (kept for inspection; the step is
  saved anew) and says so in one line."""
  moved = []
  for step in damaged:
    names = (f"{step}.damaged{n or ''}" for n in itertools.count())
    moved.append(ckpt_dir / next(n for n in names if not (ckpt_dir / n).exists()))
    if parallel.is_writer():
      os.rename(ckpt_dir / str(step), moved[-1])
  print(f"checkpoint {', '.join(str(ckpt_dir / str(s)) for s in damaged)} is damaged, moved to "
        f"{', '.join(p.name for p in moved)}; resuming from step {start}")


def train(config: ml_collections.ConfigDict, workdir: str | Path,
          mesh: jax.sharding.Mesh | None = None) -> TrainResult:
  """Trains (or resumes training) per ``config`` in ``workdir``; see the module docstring.

  With ``mesh`` (``mtajax.parallel.make_mesh``) every step runs data-parallel: the global batch
  is sharded over the mesh, the train state replicated. All processes call this; Orbax saves the
  checkpoints collectively and only process 0 writes ``metrics.jsonl``. Runs under the lock of
  ``workdir`` (``mtajax.locks.model``): a second run training into it waits for the first.
  """
  if config.log_every < 1:
    raise ValueError(f"config.log_every must be >= 1; got {config.log_every}.")
  workdir = Path(workdir)
  with locks.model(workdir):
    return _train(config, workdir, mesh)


def _train(config: ml_collections.ConfigDict, workdir: Path,
           mesh: jax.sharding.Mesh | None) -> TrainResult:
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
    start, state, damaged = checkpoint.restore_intact(
        ckpt_dir, state, lambda meta: config_lib.check_same_model(meta["config"], config, ckpt_dir))
    if damaged:
      _set_aside(ckpt_dir, damaged, start)
  if mesh is not None:
    state = parallel.replicate(state, mesh)

  train_step = step_lib.make_train_step(apply, tasks, optimizer, config)
  predict = models.Predict(apply)  # Equal for equal models: one evaluation program.
  log = _MetricsLog(workdir / "metrics.jsonl", start)
  lr = optim.learning_rate(config)
  eval_metrics: dict[str, dict[str, float]] = {}
  batches = train_loader.iterate(start)
  parallel.sync("mtajax-train-resume-checked")  # No process creates ckpt_dir before all looked.
  checkpointer = checkpoint.Checkpointer(ckpt_dir, config.keep_checkpoints)
  bar = tqdm.tqdm(total=config.num_steps, initial=start,
                  disable=not (config.progress_bar and parallel.is_writer()),
                  desc="train", dynamic_ncols=True)
  pending: list[tuple[int, Any]] = []  # (step, device values) not yet fetched: no sync per step.

  def flush() -> None:
    """Fetches the pending steps' losses in one transfer, checks and logs them."""
    fetched = jax.device_get([v for _, v in pending])
    records = []
    for (step, _), values in zip(pending, fetched):
      values = {k: float(v) for k, v in values.items()}
      _check_finite(step, values)
      records.append({"step": step + 1, "split": "train", "lr": float(lr(step)), **values})
    pending.clear()
    if records:
      bar.set_postfix(loss=f"{records[-1]['loss']:.4f}")
      log.write(records)

  try:
    for step in range(start, config.num_steps):
      batch = next(batches)
      if mesh is not None:
        batch = parallel.shard_batch(batch, mesh)
      state, values = train_step(state, batch)
      pending.append((step, values))
      done = step + 1
      bar.update(1)
      evaluate = done % config.eval_every == 0 or done == config.num_steps
      save = done % config.checkpoint_every == 0 or done == config.num_steps
      if evaluate or save or done % config.log_every == 0:
        flush()  # Before a save too: a non-finite loss is never checkpointed.
      if evaluate:
        eval_metrics = evaluate_lib.evaluate(
            predict, (state["params"], state["batch_stats"]),
            itertools.islice(eval_loader, config.eval_max_batches), tasks, mesh=mesh).metrics
        log.write([{"step": done, "split": config.eval_split, **eval_metrics}])
      if save:
        checkpointer.save(done, state,
                          checkpoint_meta(config, layout, done, train_loader.class_weights))
  finally:
    bar.close()
    checkpointer.wait()
    checkpointer.close()
  return TrainResult(state, eval_metrics, layout)
