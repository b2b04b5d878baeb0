"""The ``defend`` mode: train defences, evaluate them fairly and adaptively, write the leaderboard.

    python -m mtajax.run defend --config configs/defend.py[:smoke]

For every (layout, recipe, seed) of ``config.defend`` (a recipe is a dict of overrides of
``train.adv``; the undefended model ``'none'`` is always trained too) the mode trains the model
(resuming as the sweep does), robust-evaluates it at each ``defend.eps`` with each of
``defend.suites`` (``"attack": "robust"`` records in ``results.jsonl`` whose ``adv_training`` is the
recipe's name), runs the gradient-masking checks of :mod:`mtajax.masking` (the transfer attacks
come from the undefended twin of the same layout and seed) and writes ``report/defend.md`` and
its Pareto figure (:mod:`mtajax.report.defend`). Training seconds and the checks are stored in
``defend.jsonl``; a re-run reuses every stored record and loads no model whose records are all
stored.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import time
from typing import Any, Iterator

import jax
import ml_collections

from mtajax import loaders
from mtajax import masking
from mtajax import models
from mtajax import robust
from mtajax import robust_sweep
from mtajax import results
from mtajax import sweep
from mtajax import tasks as tasks_lib
from mtajax.data import pipeline
from mtajax.data import preprocess
from mtajax.train import assemble
from mtajax.train import checkpoint
from mtajax.train import config as train_config_lib
from mtajax.train import ensure
from mtajax.train import recipes as recipes_lib
from mtajax.train import step as step_lib

UNDEFENDED = "none"


@dataclasses.dataclass(frozen=True)
class Model:
  """One (layout, recipe, seed) of the leaderboard and its training config."""
  layout: Any
  recipe: str
  seed: int
  t: ml_collections.ConfigDict

  @property
  def name(self) -> str:
    return f"{self.t.dataset}-{self.t.backbone}-L{self.layout}-{self.recipe}-s{self.seed}"


def recipes(config: ml_collections.ConfigDict) -> dict[str, dict[str, Any]]:
  """The undefended model ``'none'`` and the config's recipes, name -> ``train.adv`` overrides."""
  return {UNDEFENDED: {"mode": "none"}, **config.defend.recipes.to_dict()}


def validate(config: ml_collections.ConfigDict) -> None:
  """Rejects a bad ``config.defend`` with one line naming the key and the fix."""
  if "defend" not in config:
    raise ValueError("the config has no 'defend' section; use --config configs/defend.py.")
  d = config.defend
  fields = set(train_config_lib.default_config().adv)
  modes = [m for m in recipes_lib.registered() if m != "none"]
  for name, overrides in d.recipes.to_dict().items():
    where = f"config.defend.recipes.{name}"
    if name == UNDEFENDED:
      raise ValueError(f"{where}: 'none' is the undefended model every run trains; rename the "
                       "recipe.")
    if not isinstance(overrides, dict):
      raise ValueError(f"{where} must be a dict of train.adv overrides; got {overrides!r}.")
    unknown = sorted(set(overrides) - fields)
    if unknown:
      raise ValueError(f"{where}: unknown train.adv fields {unknown}; use those of "
                       f"mtajax.train.config.default_config().adv: {', '.join(sorted(fields))}.")
    mode = overrides.get("mode", config.train.adv.mode)
    if mode not in modes:
      raise ValueError(f"{where}: unknown recipe mode {mode!r}; set its 'mode' to one of "
                       f"{', '.join(modes)}.")
    if not overrides.get("eps", config.train.adv.eps) >= 0:
      raise ValueError(f"{where}.eps must be >= 0; got {overrides['eps']}.")
    adv = ml_collections.ConfigDict(config.train.adv.to_dict())  # unlocked: run.py locks configs
    adv.update(overrides)
    try:
      recipes_lib.validate(adv, list(config.train.tasks))
    except ValueError as e:
      raise ValueError(f"{where}: {e}") from None
  if not d.seeds or not all(isinstance(s, int) for s in d.seeds):
    raise ValueError(f"config.defend.seeds must be integers, at least one; got {d.seeds!r}.")
  if not d.eps or not all(isinstance(e, (int, float)) and e >= 0 for e in d.eps):
    raise ValueError(f"config.defend.eps must hold numbers >= 0; got {d.eps!r}.")
  m = d.masking
  if not m.large_eps > max(d.eps):
    raise ValueError(f"config.defend.masking.large_eps must exceed every config.defend.eps "
                     f"{tuple(d.eps)}; got {m.large_eps}.")
  for field, suites in (("suites", d.suites), ("masking.suite", (m.suite,))):
    if not suites:
      raise ValueError(f"config.defend.{field} is empty; name at least one suite.")
    for suite in suites:
      try:
        robust.candidates(suite, list(config.train.tasks))
      except ValueError as e:
        raise ValueError(f"config.defend.{field}: {e}") from None


def model_list(config: ml_collections.ConfigDict) -> list[Model]:
  """Every (layout, recipe, seed), the undefended model of each layout and seed first."""
  out = []
  for layout in config.layouts:
    for seed in config.defend.seeds:
      for recipe, overrides in recipes(config).items():
        t = ensure.train_config(config, layout)
        t.seed = seed
        t.adv.update(overrides)
        out.append(Model(layout, recipe, seed, t))
  return out


def passes_per_example(t: ml_collections.ConfigDict) -> float | None:
  """Forward + backward passes per training example and step (an early-stopped attack: its most)."""
  if t.adv.mode == "none":
    return 1.0
  spec = recipes_lib.by_name(t.adv.mode).spec
  if spec is None:
    return None
  attack = spec(t.adv, t.adv.num_steps)
  return float(attack.passes(len(t.tasks)) + step_lib.updates_per_step(t.adv))


def _suite_config(config: ml_collections.ConfigDict, suite: str) -> ml_collections.ConfigDict:
  c = config.copy_and_resolve_references()
  c.robust.suite = suite
  return c


def _robust_key(config, m: Model, suite: str, eps: float) -> str:
  return robust_sweep.record_key(_suite_config(config, suite), m.t, eps)


def _train_key(m: Model) -> str:
  return results.digest(["defend-train", m.name, train_config_lib.identity(m.t), m.t.num_steps])


def _masking_key(config, m: Model, twin: Model) -> str:
  d = config.defend
  return results.digest(["defend-masking", m.name, _robust_key(config, m, d.masking.suite, 0.0),
                         _robust_key(config, twin, d.masking.suite, 0.0), tuple(d.eps),
                         d.masking.to_dict(), d.robust_seed])


def _keys(config, m: Model, twin: Model) -> list[str]:
  d = config.defend
  return ([_robust_key(config, m, s, e) for s in d.suites for e in d.eps] +
          [_train_key(m), _masking_key(config, m, twin)])


def _train(m: Model, workdir: pathlib.Path, dstore: results.Store,
           mesh: jax.sharding.Mesh | None) -> sweep.Target:
  """The model trained (its training seconds stored once, when this run trained it whole)."""
  folder = workdir / "defend" / f"{m.recipe}-s{m.seed}"
  ckpt = folder / "models" / ensure.model_id(m.t) / "checkpoints"
  fresh = checkpoint.latest_step(ckpt) is None
  start = time.perf_counter()
  loaded = ensure.ensure_trained(m.t, folder, mesh)
  key = _train_key(m)
  if key not in dstore:
    dstore.add({"key": key, "model": m.name, "kind": "train",
                "train_s": time.perf_counter() - start if fresh else None,
                "passes_per_example": passes_per_example(m.t)})
  return sweep.Target.of(m.t, loaded)


def _robust(config, m: Model, target: sweep.Target, store: results.Store) -> None:
  """The robust records of ``m`` (every suite and ε) not stored yet, on the default device (as the
  masking checks: their programs are shared)."""
  d = config.defend
  for suite in d.suites:
    c = _suite_config(config, suite)
    for eps in d.eps:
      if _robust_key(config, m, suite, eps) in store:
        continue
      print(f"defend: {m.name} robust {suite} eps={eps:g}")
      ev = robust.evaluate(target.predict, target.state, loaders.eval_batches(config, m.t),
                           target.loaded.tasks, eps=eps, bounds=preprocess.input_bounds(),
                           suite=suite, key=jax.random.key(d.robust_seed),
                           chunk=robust_sweep.chunk_size(config),
                           records=pathlib.Path(config.workdir) / "robust" /
                           f"{m.name}_{suite}_eps{eps:g}.jsonl")
      record = robust_sweep.robust_record(c, target, eps, ev, 1)
      store.add(dataclasses.replace(record, model=m.name, adv_training=m.recipe))


def _checks(config, m: Model, target: sweep.Target, twin: sweep.Target,
            store: results.Store) -> list[masking.Check]:
  """The masking checks of ``m`` (no transfer check for the undefended model itself)."""
  d, mk = config.defend, config.defend.masking
  batches = list(loaders.eval_batches(config, m.t))
  tasks = target.loaded.tasks
  known = {}
  if mk.suite in d.suites:
    known = {e: store.get(_robust_key(config, m, mk.suite, e))["arp"] for e in d.eps}
  at = max(d.eps)
  common = dict(bounds=preprocess.input_bounds(), suite=mk.suite,
                key=jax.random.key(d.robust_seed))
  args = (target.predict, target.state, batches, tasks)
  print(f"defend: {m.name} masking checks")
  checks = [masking.eps_sweep(*args, eps=tuple(d.eps), large_eps=mk.large_eps,
                              tolerance=mk.eps_tolerance, broken_arp=mk.broken_arp, known=known,
                              **common)]
  if m.recipe != UNDEFENDED:
    checks.append(masking.transfer(target.predict, target.state, twin.state, batches, tasks,
                                   eps=at, source_predict=twin.predict,
                                   tolerance=mk.transfer_tolerance, whitebox_arp=known.get(at),
                                   **common))
  checks += [masking.more_steps(*args, eps=at, factor=mk.steps_factor,
                                tolerance=mk.steps_tolerance, base_arp=known.get(at), **common),
             masking.gradients(*args, min_share=mk.min_grad_share)]
  return checks


def _row(config, m: Model, twin: Model, store: results.Store,
         dstore: results.Store) -> Any:
  """The leaderboard row of ``m`` (``mtajax.report.defend.Row``) from the stored records."""
  # Matplotlib loads only when a report is written (run.py imports this module for every mode).
  from mtajax.report import defend as report_defend  # pylint: disable=g-import-not-at-top
  d = config.defend
  robust_records = {(s, e): store.get(_robust_key(config, m, s, e)) for s in d.suites
                    for e in d.eps}
  clean = next(iter(robust_records.values()))["clean_metrics"]
  twin_clean = store.get(_robust_key(config, twin, d.suites[0], d.eps[0]))["clean_metrics"]
  try:
    clean_loss = tasks_lib.arp(twin_clean, clean, assemble.make_tasks(m.t)).total
  except ValueError:  # A clean metric of the undefended model is 0: the ARP is undefined.
    clean_loss = None
  masking_record = dstore.get(_masking_key(config, m, twin))
  checks = masking_record["checks"]
  trained = dstore.get(_train_key(m))
  robust_s = [r.get("time_s") for r in robust_records.values()]
  return report_defend.Row(
      layout=str(m.layout), sharing_level=models.sharing_level(
          models.resolve_layout(m.layout, len(m.t.tasks))),
      recipe=m.recipe, seed=m.seed, clean_loss=clean_loss,
      robust={k: r["arp"] for k, r in robust_records.items()},
      converged={k: bool(r["converged"]) for k, r in robust_records.items()},
      checks={c["name"]: c["passed"] for c in checks},
      reasons=[f"{c['name']}: {c['reason']}" for c in checks if not c["passed"]],
      train_s=trained["train_s"], passes_per_example=trained["passes_per_example"],
      robust_s=None if None in robust_s else float(sum(robust_s)),
      checks_s=masking_record.get("seconds"))


def _pairs(config) -> Iterator[tuple[Model, Model]]:
  """Each model with its undefended twin (same layout and seed)."""
  twins = {}
  for m in model_list(config):
    if m.recipe == UNDEFENDED:
      twins[(str(m.layout), m.seed)] = m
    yield m, twins[(str(m.layout), m.seed)]


def run(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None
        ) -> pathlib.Path:
  """Trains (data-parallel over ``mesh``), evaluates and checks every model of ``config.defend``;
  returns the report's path."""
  validate(config)
  start = time.perf_counter()
  workdir = pathlib.Path(config.workdir)
  store = results.Store(workdir / "results.jsonl")
  dstore = results.Store(workdir / "defend.jsonl")
  t = config.train
  if t.dataset == "synthetic":
    pipeline.prepare(t.dataset, os.path.expanduser(t.data_dir), config=t.data_config)
  targets: dict[str, sweep.Target] = {}

  def target(m: Model) -> sweep.Target:
    if m.name not in targets:
      targets[m.name] = _train(m, workdir, dstore, mesh)
    return targets[m.name]

  pairs = list(_pairs(config))
  for m, twin in pairs:
    if all(k in store or k in dstore for k in _keys(config, m, twin)):
      continue  # Everything stored: the model is not loaded.
    _robust(config, m, target(m), store)
    key = _masking_key(config, m, twin)
    if key not in dstore:
      began = time.perf_counter()
      checks = _checks(config, m, target(m), target(twin), store)
      dstore.add({"key": key, "model": m.name, "kind": "masking",
                  "checks": [dataclasses.asdict(c) for c in checks],
                  "seconds": time.perf_counter() - began})
  from mtajax.report import defend as report_defend  # pylint: disable=g-import-not-at-top
  rows = [_row(config, m, twin, store, dstore) for m, twin in pairs]
  return report_defend.write(rows, workdir / "report", suites=tuple(config.defend.suites),
                             eps=tuple(config.defend.eps), seconds=time.perf_counter() - start)
