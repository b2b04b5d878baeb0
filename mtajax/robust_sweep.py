"""The robust evaluation of the sweep's models: one ``"attack": "robust"`` record per model and ε.

``python -m mtajax.run robust`` trains the config's missing models (as ``sweep`` does), runs
:func:`mtajax.robust.evaluate` on the same test images as the grid and stores one record per
(model, ε) in ``results.jsonl``, next to the grid's records; stored records are skipped, so a
killed run resumes where it stopped. Each record also states the compute of the paper grid at
that ε (forward + backward passes per image) and whether the number converged (``trajectory``,
``at_last_step``, ``converged``: :class:`mtajax.robust.RobustEvaluation`); the per-image records go
to ``<workdir>/robust/<model>_eps<ε>.jsonl``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jax
import ml_collections

from mtajax import attacks
from mtajax import directions as directions_lib
from mtajax import loaders
from mtajax import parallel
from mtajax import results
from mtajax import robust
from mtajax import sweep
from mtajax import tasks as tasks_lib
from mtajax.data import preprocess
from mtajax.train import ensure

ROBUST = "robust"


def eps_values(config: ml_collections.ConfigDict) -> tuple[float, ...]:
  """``config.robust.eps``, or the grid's ε when unset."""
  eps = config.robust.eps if config.robust.eps is not None else config.eps
  return tuple(float(e) for e in eps)


def validate(config: ml_collections.ConfigDict) -> None:
  """Rejects a bad ``config.robust`` with a one-line error naming the key."""
  bad = [e for e in eps_values(config) if not e >= 0]
  if bad:
    raise ValueError(f"config.robust.eps must hold values >= 0; got {bad}.")
  try:
    robust.candidates(config.robust.suite, list(config.train.tasks))
  except ValueError as e:
    raise ValueError(f"config.robust.suite: {e}") from None
  try:
    robust.check_chunk(chunk_size(config))
  except ValueError as e:
    raise ValueError(f"config.robust.{e}") from None


def chunk_size(config: ml_collections.ConfigDict) -> int | None:
  """Images per attacked chunk (:func:`mtajax.robust.evaluate`'s ``chunk``; None: the batch)."""
  return config.robust.get("chunk")


def grid_passes(config: ml_collections.ConfigDict, num_tasks: int) -> int:
  """Forward + backward passes per image of the paper grid at one ε (clean pass included)."""
  total = 1
  for attack in config.attacks:
    for name in sweep.direction_names(config, attack):
      spec = attacks.Attack(attack, directions_lib.by_name(name), config.num_steps)
      total += spec.passes(num_tasks) + 1  # and the forward that scores it
  return total


def _hash(config, t) -> str:
  r = config.robust
  # The suite's members (what it runs, not only its name) and the attack losses' revisions: a
  # redefined suite or loss never reuses records of the old definition.
  members = robust.SUITES.get(r.suite, ())
  # Another chunk draws other random starts; unset, the key is the one of earlier releases.
  chunk = [] if chunk_size(config) is None else [("chunk", chunk_size(config))]
  return results.digest([sweep.config_hash(config, t), r.suite, r.threshold, r.seed, members,
                         tasks_lib.attack_losses.REVISIONS] + chunk)


def record_key(config, t, eps: float) -> str:
  return results.record_key(ensure.model_id(t), ROBUST, config.robust.suite, eps, 0,
                            _hash(config, t))


def model_keys(config: ml_collections.ConfigDict, t: ml_collections.ConfigDict) -> set[str]:
  """The keys of the robust records of model ``t``."""
  return {record_key(config, t, eps) for eps in eps_values(config)}


def current_keys(config: ml_collections.ConfigDict) -> set[str]:
  """The keys of the robust records this config makes (what the report shows by default), and
  those of the ``thorough`` suite on the same models (a lighter suite's gap to it)."""
  thorough = config.copy_and_resolve_references()
  thorough.robust.suite = "thorough"
  return set().union(*(model_keys(c, ensure.train_config(c, layout, adv))
                       for c in (config, thorough) for adv in (False, True)
                       for layout in config.layouts))


def robust_record(config: ml_collections.ConfigDict, target: sweep.Target, eps: float,
                   ev: robust.RobustEvaluation, devices: int) -> results.RobustRecord:
  """The stored record of ``ev``, the evaluation of ``target`` at ``eps`` with ``config.robust``."""
  t = target.t
  return results.RobustRecord(
      key=record_key(config, t, eps), **ensure.record_fields(t, target.loaded.layout),
      attack=ROBUST, direction=None, suite=config.robust.suite, eps=float(eps), num_steps=0,
      metrics=ev.worst_case, clean_metrics=ev.clean, arp=ev.arp, arp_per_task=ev.arp_per_task,
      envelope=ev.envelope, candidate_arp=ev.candidate_arp, wins=ev.wins,
      passes_per_image=ev.passes_per_image, trajectory=ev.trajectory,
      at_last_step=ev.at_last_step, converged=ev.converged, restart_gain=ev.restart_gain,
      grid_passes_per_image=grid_passes(config, len(t.tasks)), config_hash=_hash(config, t),
      devices=devices, time_s=ev.seconds, compile_s=ev.compile_seconds)


def robust_records(config: ml_collections.ConfigDict, targets: list[sweep.Target],
                   store: results.Store, mesh: jax.sharding.Mesh | None = None
                   ) -> list[dict[str, Any]]:
  """The robust record of every (model, ε); evaluates and stores those not stored yet."""
  validate(config)
  workdir = Path(config.workdir)
  records = []
  for target in targets:
    for eps in eps_values(config):
      key = record_key(config, target.t, eps)
      if key not in store:
        model = ensure.model_id(target.t)
        print(f"robust: {model} eps={eps:g} suite={config.robust.suite}")
        start = time.perf_counter()
        ev = robust.evaluate(
            target.predict, target.state, loaders.eval_batches(config, target.t),
            target.loaded.tasks,
            eps=eps, bounds=preprocess.input_bounds(), suite=config.robust.suite,
            key=jax.random.key(config.robust.seed), mesh=mesh, threshold=config.robust.threshold,
            one_program=config.one_program_per_attack, chunk=chunk_size(config),
            records=(workdir / ROBUST / f"{model}_eps{eps:g}.jsonl" if parallel.is_writer()
                     else None))
        store.add(robust_record(config, target, eps, ev, 1 if mesh is None else mesh.size))
        print(f"robust: {model} eps={eps:g}: robust ARP {ev.arp:.2f}, "
              f"{ev.passes_per_image:.0f} passes/image, {time.perf_counter() - start:.1f}s (compiling "
              f"{ev.compile_seconds:.1f}s)")
      records.append(store.get(key))
  return records


def run(config: ml_collections.ConfigDict,
        examples: bool = False) -> tuple[results.Store, list[sweep.Target]]:
  """Trains the config's missing models and robust-evaluates them (the ``robust`` mode); a model
  whose robust records are all stored is not loaded (``examples``: as in :func:`sweep.run`)."""
  validate(config)
  store, targets = sweep.run(config, train_only=True, keys=lambda t: model_keys(config, t),
                             examples=examples)
  robust_records(config, targets, store, parallel.make_mesh(config.mesh))
  return store, targets
