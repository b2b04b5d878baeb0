"""The experiment grid: train missing models, evaluate clean and attacked, store one record each.

Data flow: run config → data loaders → (trained) model → attack grid → metrics/ARP → records
(`mtajax.results.Store`) → report (`mtajax.report`). Every step is resumable: training resumes from
its latest checkpoint, finished records are skipped, the clean baseline is cached as a record.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import itertools
import os
import time
from pathlib import Path
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from mtajax import attacks
from mtajax import directions as directions_lib
from mtajax import evaluate as evaluate_lib
from mtajax import models
from mtajax import parallel
from mtajax import results
from mtajax import tasks as tasks_lib
from mtajax.data import pipeline
from mtajax.data import preprocess
from mtajax.train import checkpoint
from mtajax.train import load
from mtajax.train import loop



def validate(config: ml_collections.ConfigDict) -> None:
  """Rejects invalid run settings with a one-line error naming the key."""
  for name in config.attacks:
    attacks.by_name(name)
  for name in config.directions:
    if name != "single":
      directions_lib.by_name(name)
  for key in ("eps", "examples_eps"):
    bad = [e for e in getattr(config, key) if not e >= 0]
    if bad:
      raise ValueError(f"config.{key} must hold values >= 0; got {bad}.")
  if not config.report_eps >= 0:
    raise ValueError(f"config.report_eps must be >= 0; got {config.report_eps}.")
  for key in ("num_steps", "eval_batch_size"):
    if getattr(config, key) < 1:
      raise ValueError(f"config.{key} must be >= 1; got {getattr(config, key)}.")
  for layout in config.layouts:
    try:
      models.resolve_layout(layout, len(config.train.tasks))
    except ValueError as e:
      raise ValueError(f"config.layouts: invalid layout {layout!r}: {e}") from None
  if config.train.dataset != "synthetic":
    data_dir = Path(os.path.expanduser(config.train.data_dir))
    if not data_dir.is_dir():
      raise ValueError(f"dataset directory {data_dir} does not exist; prepare the dataset there or "
                       "set --config.train.data_dir.")


def direction_names(config: ml_collections.ConfigDict, attack: str) -> list[str]:
  """The directions to run for ``attack``: 'single' expands to every task."""
  names = []
  for name in config.directions:
    names += [f"single_{t}" for t in config.train.tasks] if name == "single" else [name]
  if attack == "auto_sage":
    # Auto-SAGE reweights per-task gradients (total, gbmta; the reference runs no other, §5.5).
    names = [n for n in names if getattr(directions_lib.by_name(n), "sums_task_grads", False)]
  return names


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
  label = adv_label(t)
  suffix = "" if label == "none" else "-" + label.replace(":", "_")
  return f"{t.dataset}-{t.backbone}-L{t.layout}{suffix}"


def ensure_trained(t: ml_collections.ConfigDict, workdir: Path,
                   mesh: jax.sharding.Mesh | None = None) -> load.LoadedModel:
  """Trains the model of ``t`` unless its final checkpoint exists (resuming a partial run)."""
  model_dir = workdir / "models" / model_id(t)
  ckpt = model_dir / "checkpoints"
  done = False
  if checkpoint.latest_step(ckpt) is not None:  # A run killed before its first save has none.
    step, meta = checkpoint.restore_meta(ckpt)
    if meta["config"] != json.loads(json.dumps(t.to_dict())):
      raise ValueError(f"{model_dir} holds a model trained with another config (layout "
                       f"{meta['config'].get('layout')}); use another workdir or delete it.")
    done = step >= t.num_steps
  if not done:
    print(f"training {model_id(t)} ({t.num_steps} steps)")
    loop.train(t, model_dir, mesh)
  return load.load_model(ckpt)


@dataclasses.dataclass
class Target:
  """A trained model under evaluation."""
  t: ml_collections.ConfigDict
  loaded: load.LoadedModel
  predict: Any
  state: Any

  @classmethod
  def of(cls, t, loaded):
    return cls(t, loaded, *loaded.pure_predict())


def _batches(config, t) -> Iterator[dict[str, np.ndarray]]:
  loader = pipeline.dataset(t.dataset, os.path.expanduser(t.data_dir), config.eval_split,
                            batch_size=config.eval_batch_size, tasks=t.tasks,
                            config=t.data_config)
  return itertools.islice(iter(loader), config.eval_max_batches)


def config_hash(config: ml_collections.ConfigDict, t: ml_collections.ConfigDict) -> str:
  """Hash of everything besides the record identity that changes a record's numbers."""
  return results.digest([t.to_dict(), config.eval_split, config.eval_batch_size,
                         config.eval_max_batches])


def _record(target: Target, config, attack: str, direction: str | None, eps: float,
            num_steps: int, ev: evaluate_lib.Evaluation, clean: dict | None,
            seconds: float, devices: int) -> dict[str, Any]:
  t = target.t
  tasks = target.loaded.tasks
  arp, note = None, None
  if clean is not None:
    try:
      arp = tasks_lib.arp(clean["metrics"], ev.metrics, tasks)
    except ValueError as e:  # A clean metric of 0 (an untrained model, say): ARP is undefined.
      note = str(e)
  layout = target.loaded.layout
  return {
      "key": results.record_key(model_id(t), attack, direction, eps, num_steps,
                                config_hash(config, t)),
      "model": model_id(t), "dataset": t.dataset, "backbone": t.backbone,
      "layout_idx": t.layout if isinstance(t.layout, int) else None, "layout": str(layout),
      "sharing_level": models.sharing_level(layout), "adv_training": adv_label(t),
      "attack": attack, "direction": direction, "eps": float(eps), "num_steps": int(num_steps),
      "tasks": list(t.tasks), "metrics": ev.metrics, "losses": ev.losses,
      "arp": None if arp is None else arp.total,
      "arp_per_task": None if arp is None else dict(arp.per_task), "note": note,
      "config_hash": config_hash(config, t), "devices": devices,
      "global_batch": config.eval_batch_size,
      "per_device_batch": config.eval_batch_size // devices, "time_s": seconds,
  }


def grid(config: ml_collections.ConfigDict) -> list[tuple[str, str, float]]:
  return [(a, d, e) for a in config.attacks for d in direction_names(config, a)
          for e in config.eps]


def evaluate_model(config, target: Target, store: results.Store, bar: tqdm.tqdm,
                   mesh: jax.sharding.Mesh | None = None) -> None:
  """The clean record and every (attack, direction, ε) record of one model, skipping stored ones."""
  t, tasks = target.t, target.loaded.tasks
  devices = 1 if mesh is None else mesh.size
  h = config_hash(config, t)
  clean_key = results.record_key(model_id(t), "clean", None, 0.0, 0, h)
  if clean_key not in store:
    start = time.perf_counter()
    ev = evaluate_lib.evaluate(target.predict, target.state, _batches(config, t), tasks,
                               mesh=mesh)
    store.add(_record(target, config, "clean", None, 0.0, 0, ev, None,
                      time.perf_counter() - start, devices))
  clean = store.get(clean_key)
  bounds = preprocess.input_bounds()
  options = () if config.unroll is None else (("unroll", config.unroll),)
  for attack, direction, eps in grid(config):
    steps = 1 if attack == "fgsm" else config.num_steps
    if results.record_key(model_id(t), attack, direction, eps, steps, h) not in store:
      bar.set_postfix_str(f"{model_id(t)} {attack} {direction} eps={eps:g}")
      spec = evaluate_lib.AttackSpec(attack, directions_lib.by_name(direction), config.num_steps,
                                     options)
      start = time.perf_counter()
      ev = evaluate_lib.evaluate(target.predict, target.state, _batches(config, t), tasks,
                                 spec=spec, eps=eps, bounds=bounds, baselines=clean["losses"],
                                 mesh=mesh)
      store.add(_record(target, config, attack, direction, eps, steps, ev, clean,
                        time.perf_counter() - start, devices))
    bar.update(1)


def examples(config, target: Target) -> dict[str, Any]:
  """Fig. 6 material: one test image, its GB-MTA-PGD perturbations and predictions before/after."""
  batch = {k: jnp.asarray(v) for k, v in next(_batches(config, target.t)).items()}
  loss_fn = tasks_lib.make_loss_fn(functools.partial(target.predict, target.state),
                                   target.loaded.tasks, "image")
  rgb = lambda x: np.clip(preprocess.decode_image(np.asarray(x[0])), 0, 255).astype(np.uint8)  # pylint: disable=unnecessary-lambda-assignment
  perturbed, x_adv = {}, batch["image"]
  for eps in config.examples_eps:
    x_adv = attacks.pgd(loss_fn, batch["image"], batch, direction=directions_lib.gbmta(),
                        eps=eps, bounds=preprocess.input_bounds(), num_steps=config.num_steps,
                        unroll=config.unroll).x_adv
    perturbed[float(eps)] = rgb(x_adv)
  first = lambda p: {k: np.asarray(v[0]) for k, v in p.items()}  # pylint: disable=unnecessary-lambda-assignment
  return {"image_rgb": rgb(batch["image"]), "perturbed": perturbed,
          "preds_clean": first(target.predict(target.state, batch["image"])),
          "preds_adv": first(target.predict(target.state, x_adv)),
          "tasks": list(target.t.tasks)}


def run(config: ml_collections.ConfigDict, *, train_only: bool = False,
        adversarial: bool = False) -> tuple[results.Store, list[Target]]:
  """Trains what is missing and evaluates the whole grid; returns the store and the models.

  Runs data-parallel over ``parallel.make_mesh(config.mesh)``. Under ``jax.distributed`` every
  process runs this (the workdir must be on storage all of them see); only process 0 writes.
  """
  validate(config)
  mesh = parallel.make_mesh(config.mesh)
  workdir = Path(config.workdir)
  store = results.Store(workdir / "results.jsonl", write=parallel.is_writer())
  configs = [train_config(config, layout) for layout in config.layouts]
  if adversarial:
    configs += [train_config(config, layout, adversarial=True) for layout in config.layouts]
  if parallel.is_writer():  # One process generates the embedded benchmark; the others wait.
    for t in configs:
      if t.dataset == "synthetic":
        pipeline.prepare(t.dataset, os.path.expanduser(t.data_dir), config=t.data_config)
  parallel.sync("mtajax-sweep-ready")  # Every process read the stored keys before any write.
  targets = [Target.of(t, ensure_trained(t, workdir, mesh)) for t in configs]
  if train_only:
    return store, targets
  bar = tqdm.tqdm(total=len(targets) * len(grid(config)), desc="attacks", dynamic_ncols=True,
                  disable=not parallel.is_writer())
  with bar:
    for target in targets:
      evaluate_model(config, target, store, bar, mesh)
  return store, targets
