"""The experiment grid: train missing models, evaluate clean and attacked, store one record each.

Data flow: run config → data loaders (`mtajax.loaders`) → (trained) model
(`mtajax.train.ensure`) → attack grid → metrics/ARP → records (`mtajax.results.GridRecord` in
`mtajax.results.Store`) → report (`mtajax.report`). Every step is resumable: training resumes
from its latest checkpoint, finished records are skipped, the clean baseline is cached as a record.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from pathlib import Path
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
import tqdm

from mtajax import attacks
from mtajax import directions as directions_lib
from mtajax import evaluate as evaluate_lib
from mtajax import loaders
from mtajax import memory
from mtajax import models
from mtajax import parallel
from mtajax import phases
from mtajax import results
from mtajax import tasks as tasks_lib
from mtajax.tasks import attack_losses
from mtajax.data import pipeline
from mtajax.data import preprocess
from mtajax.train import assemble
from mtajax.train import config as train_config_lib
from mtajax.train import ensure
from mtajax.train import load
from mtajax.train import optim


def validate(config: ml_collections.ConfigDict, data: bool = True) -> None:
  """Rejects invalid run settings with a one-line error naming the key (``data``: also that the
  dataset directory exists)."""
  for name in config.attacks:
    attacks.by_name(name)
  for name in config.directions:
    if name != "single":
      directions_lib.by_name(name)
  for name in config.attack_losses:
    attack_losses.get(name)
  for field in ("eps", "examples_eps", "report_eps"):
    values = getattr(config, field)
    values = values if isinstance(values, (tuple, list)) else (values,)
    bad = [e for e in values if isinstance(e, bool) or not isinstance(e, (int, float)) or
           not e >= 0]
    if bad or not values:
      raise ValueError(f"config.{field} must hold numbers >= 0; got {getattr(config, field)!r}.")
  for gone in ("unroll", "xla_fast_compile"):
    if gone in config:
      raise ValueError(f"config.{gone} is no longer a config key: attack loops follow the platform "
                       "(MTAJAX_ATTACK_LOOP=unrolled|rolled|python chooses them for a run) and "
                       "XLA_FLAGS=--xla_backend_optimization_level=0 compiles faster; remove it.")
  t = config.train
  for field, value in [("num_steps", config.num_steps), ("eval_batch_size", config.eval_batch_size)
                      ] + [(f"train.{k}", t[k]) for k in (
                          "num_steps", "batch_size", "eval_batch_size", "eval_every",
                          "checkpoint_every", "keep_checkpoints", "log_every")]:
    if not value >= 1:
      raise ValueError(f"config.{field} must be >= 1; got {value}.")
  optim.learning_rate(t)  # lr, lr_decay_every, lr_decay_rate
  assemble.make_tasks(t)  # dataset and task names
  for layout in config.layouts:
    try:
      models.resolve_layout(layout, len(t.tasks))
    except ValueError as e:
      raise ValueError(f"config.layouts: invalid layout {layout!r}: {e}") from None
  if data and t.dataset != "synthetic":
    data_dir = Path(os.path.expanduser(t.data_dir))
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


@dataclasses.dataclass
class Target:
  """A trained model under evaluation (``loaded`` None: every record of it is stored, not loaded)."""
  t: ml_collections.ConfigDict
  loaded: load.LoadedModel | None
  predict: Any
  state: Any

  @classmethod
  def of(cls, t, loaded):
    if loaded is None:
      return cls(t, None, None, None)
    return cls(t, loaded, *loaded.pure_predict())


def config_hash(config: ml_collections.ConfigDict, t: ml_collections.ConfigDict) -> str:
  """Hash of everything besides the record identity that changes a record's numbers: the model
  (``train.config.identity``), the step count it is trained to and the evaluation data."""
  return results.digest([train_config_lib.identity(t), t.num_steps, config.eval_split,
                         config.eval_batch_size, config.eval_max_batches])


def _grid_record(target: Target, config: ml_collections.ConfigDict, attack: str,
                direction: str | None, eps: float, ev: evaluate_lib.Evaluation,
                clean: dict[str, Any] | None, seconds: float, devices: int,
                attack_loss: str = "default") -> results.GridRecord:
  """The record of one evaluation of the grid (``clean``: the model's clean record, None for it)."""
  t = target.t
  arp, note = None, None
  if clean is not None:
    try:
      arp = tasks_lib.arp(clean["metrics"], ev.metrics, target.loaded.tasks)
    except ValueError as e:  # A clean metric of 0 (an untrained model, say): ARP is undefined.
      note = str(e)
  return results.GridRecord(
      key=key(config, t, attack, direction, eps, attack_loss),
      **ensure.record_fields(t, target.loaded.layout),
      train_steps=int(t.num_steps), attack=attack, direction=direction, attack_loss=attack_loss,
      eps=float(eps), num_steps=attack_steps(config, attack), metrics=ev.metrics, losses=ev.losses,
      arp=None if arp is None else arp.total,
      arp_per_task=None if arp is None else dict(arp.per_task), note=note,
      config_hash=config_hash(config, t), devices=devices, global_batch=config.eval_batch_size,
      per_device_batch=config.eval_batch_size // devices, time_s=seconds)


def grid(config: ml_collections.ConfigDict) -> list[tuple[str, str, str, float]]:
  return [(a, d, l, e) for a in config.attacks for d in direction_names(config, a)
          for l in config.attack_losses for e in config.eps]


def attack_steps(config: ml_collections.ConfigDict, attack: str) -> int:
  return {"clean": 0, "fgsm": 1}.get(attack, config.num_steps)


def key(config: ml_collections.ConfigDict, t: ml_collections.ConfigDict, attack: str,
        direction: str | None, eps: float, attack_loss: str = "default") -> str:
  """The record key of one cell: model identity and training steps, attack, direction, ε, loss."""
  return results.record_key(ensure.model_id(t), attack, direction, eps,
                            attack_steps(config, attack), config_hash(config, t),
                            attack_losses.key_name(attack_loss))


def model_keys(config: ml_collections.ConfigDict, t: ml_collections.ConfigDict) -> set[str]:
  """The keys of the grid's records of model ``t``: its clean record and every attacked cell."""
  cells = [("clean", None, 0.0, "default")] + [(a, d, e, l) for a, d, l, e in grid(config)]
  return {key(config, t, *cell) for cell in cells}


def current_keys(config: ml_collections.ConfigDict) -> set[str]:
  """The keys of every record this config makes (clean-trained and adversarially trained models)."""
  return set().union(*(model_keys(config, ensure.train_config(config, layout, adv))
                       for adv in (False, True) for layout in config.layouts))


def examples_key(config: ml_collections.ConfigDict, t: ml_collections.ConfigDict) -> str:
  """What the Fig. 6 examples of model ``t`` depend on: the model, its steps, data and the ε."""
  return results.digest([key(config, t, "pgd", "gbmta", e) for e in config.examples_eps])


def _refresh(store: results.Store) -> None:
  """Reads the cells another run on this workdir stored meanwhile (single-process runs only: the
  processes of one multi-host run must all see the same cells)."""
  if jax.process_count() == 1:
    store.refresh()


def attack_spec(config, attack: str, direction: str,
                loss: str = attack_losses.DEFAULT) -> tuple[attacks.Attack, int | None]:
  """The evaluation's attack and direction index: with ``config.one_program_per_attack``, FGSM,
  PGD and APGD with the default attack loss run Single-x, Total and GB-MTA through one compiled
  program (:class:`mtajax.evaluate.Switched`, the direction a traced index); others get their own."""
  d = directions_lib.by_name(direction)
  names = [n for n in direction_names(config, attack)
           if evaluate_lib.switchable(directions_lib.by_name(n))]
  if (config.one_program_per_attack and attack in ("fgsm", "pgd", "apgd")
      and loss == attack_losses.DEFAULT and direction in names):
    switched = evaluate_lib.switched([directions_lib.by_name(n) for n in names])
    return attacks.Attack(attack, switched, config.num_steps, (), loss), switched.choices.index(d)
  return attacks.Attack(attack, d, config.num_steps, (), loss), None


def model_records(config: ml_collections.ConfigDict, target: Target, store: results.Store,
                  bar: tqdm.tqdm, mesh: jax.sharding.Mesh | None = None) -> list[dict[str, Any]]:
  """The grid's records of one model, its clean record first; evaluates and stores those not
  stored yet (stored ones are read back, not evaluated again)."""
  t = target.t
  name = ensure.model_id(t)
  devices = 1 if mesh is None else mesh.size
  clean_key = key(config, t, "clean", None, 0.0)
  _refresh(store)
  if clean_key not in store:
    bar.write(f"clean evaluation {name}")
    start = time.perf_counter()
    ev = evaluate_lib.evaluate(target.predict, target.state, loaders.eval_batches(config, t),
                               target.loaded.tasks, mesh=mesh)
    store.add(_grid_record(target, config, "clean", None, 0.0, ev, None,
                          time.perf_counter() - start, devices))
  clean = store.get(clean_key)
  records = [clean]
  bounds = preprocess.input_bounds()
  for attack, direction, loss, eps in grid(config):
    _refresh(store)
    cell = key(config, t, attack, direction, eps, loss)
    if cell not in store:
      bar.set_postfix_str(f"{name} {attack} {direction} {loss} eps={eps:g}")
      bar.write(f"attacking {name}: {attack} {direction} {loss} eps={eps:g}")
      spec, index = attack_spec(config, attack, direction, loss)
      start = time.perf_counter()
      ev = evaluate_lib.evaluate(target.predict, target.state, loaders.eval_batches(config, t),
                                 target.loaded.tasks,
                                 spec=spec, eps=eps, bounds=bounds, baselines=clean["losses"],
                                 direction_index=index, mesh=mesh)
      store.add(_grid_record(target, config, attack, direction, eps, ev, clean,
                            time.perf_counter() - start, devices, loss))
    records.append(store.get(cell))
    bar.update(1)
  return records


def examples(config, target: Target, mesh: jax.sharding.Mesh | None = None) -> dict[str, Any]:
  """Fig. 6 material: one test image, its GB-MTA-PGD perturbations and predictions before/after."""
  batch = next(loaders.eval_batches(config, target.t))
  # The grid's GB-MTA PGD (with the Python loop its programs are compiled already; with
  # one_program_per_attack its Switched attack) on the grid's first batch.
  spec, index = attack_spec(config, "pgd", "gbmta")
  rgb = lambda x: np.clip(preprocess.decode_image(np.asarray(x[0])), 0, 255).astype(np.uint8)  # pylint: disable=unnecessary-lambda-assignment
  perturbed, x_adv = {}, batch["image"]
  for eps in config.examples_eps:
    x_adv = evaluate_lib.attack_batch(target.predict, target.state, batch, target.loaded.tasks,
                                      spec=spec, eps=eps, bounds=preprocess.input_bounds(),
                                      direction_index=index, mesh=mesh)
    perturbed[float(eps)] = rgb(x_adv)
  predict = jax.jit(target.predict)
  first = lambda p: {k: np.asarray(v[0]) for k, v in p.items()}  # pylint: disable=unnecessary-lambda-assignment
  return {"image_rgb": rgb(batch["image"]), "perturbed": perturbed,
          "preds_clean": first(predict(target.state, batch["image"])),
          "preds_adv": first(predict(target.state, np.asarray(x_adv))),
          "tasks": list(target.t.tasks)}


def run(config: ml_collections.ConfigDict, *, train_only: bool = False, adversarial: bool = False,
        keys: Callable[[ml_collections.ConfigDict], set[str]] | None = None,
        examples: bool = False) -> tuple[results.Store, list[Target]]:
  """Trains what is missing and evaluates the whole grid; returns the store and the models.

  A model whose records ``keys(t)`` (default: :func:`model_keys`; none with ``train_only``, which
  loads every model) are all stored is neither trained nor loaded (``Target.loaded`` None), unless
  ``examples`` (the Fig. 6 examples are to be made) and it is the first model. Runs data-parallel over
  ``parallel.make_mesh(config.mesh)``. Under ``jax.distributed`` every process runs this (the
  workdir must be on storage all of them see); only process 0 writes.
  """
  validate(config)
  mesh = parallel.make_mesh(config.mesh)
  workdir = Path(config.workdir)
  store = results.Store(workdir / "results.jsonl", write=parallel.is_writer())
  configs = [ensure.train_config(config, layout) for layout in config.layouts]
  if adversarial:
    configs += [ensure.train_config(config, layout, adversarial=True) for layout in config.layouts]
  with phases.PHASES("data"):
    if parallel.is_writer():  # One process generates the embedded benchmark; the others wait.
      for t in configs:
        if t.dataset == "synthetic":
          pipeline.prepare(t.dataset, os.path.expanduser(t.data_dir), config=t.data_config)
    parallel.sync("mtajax-sweep-ready")  # Every process read the stored keys before any write.
  targets = []
  with phases.PHASES("training"):
    needs = keys or (None if train_only else functools.partial(model_keys, config))
    for i, t in enumerate(configs):
      stored = needs is not None and not (examples and i == 0) and all(k in store for k in needs(t))
      targets.append(Target.of(t, None if stored else ensure.ensure_trained(t, workdir, mesh)))
      memory.release_compiled()
  if train_only:
    return store, targets
  bar = tqdm.tqdm(total=len(targets) * len(grid(config)), desc="attacks", dynamic_ncols=True,
                  disable=not parallel.is_writer())
  with bar, phases.PHASES("attacks"):
    for target in targets:
      model_records(config, target, store, bar, mesh)
      memory.release_compiled()
  return store, targets
