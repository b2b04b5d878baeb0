"""Choosing the robust suites by measurement: every candidate of a pool once, then any sub-suite.

    python benchmarks/suite_design.py [--eps 4 8] [--pool design|suites|thorough_x2]
                                      [--max-batches N] [--save DIR] [--load DIR] [--greedy K]

Per quickstart model and ε, runs every candidate of the pool once (:func:`mtajax.robust.attack_all`)
and prints, for each registered suite that is a sub-suite of the pool, its robust ARP, its gap to
``thorough`` and its passes per image (:func:`mtajax.robust.summarise` of its candidates equals its
own evaluation: a candidate's random start depends only on its restart index). Then a greedy
design: starting from nothing, it adds the candidate with the largest robust-ARP gain per pass,
summed over the models and ε, and prints the robust ARP of each prefix per (model, ε) — the
cheapest prefix within 0.5 point of the whole pool everywhere is the suite to take. ``--save`` keeps
each pool run (pickle) so that ``--load`` redoes the analysis without attacking again.
"""

from __future__ import annotations

import argparse
import pathlib
import pickle
import sys
import time

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# pylint: disable=g-import-not-at-top,wrong-import-position
import mtajax  # noqa: E402,F401
from configs import quickstart  # noqa: E402
from mtajax import loaders  # noqa: E402
from mtajax import robust  # noqa: E402
from mtajax import sweep  # noqa: E402
from mtajax import worst_case  # noqa: E402
from mtajax.data import preprocess  # noqa: E402
from mtajax.train import ensure  # noqa: E402

AA = robust.APGD_AA
POOLS = {
    # Every member of `standard` and `thorough`, and shorter / other-loss variants to choose from.
    "design": (
        robust.SUITES["thorough"]
        + robust.SUITES["standard"]
        + tuple(("apgd", "gbmta", {**AA, "num_steps": 50, **loss})
                for loss in ({}, {"attack_loss": "segpgd"}, {"attack_loss": "js"},
                             {"attack_loss": "cospgd"}))
        # JS on the segmentation head, the relative error on the regression heads.
        + (("apgd", "gbmta", {**AA, "num_steps": 100, "attack_loss": "js_relative"}),)),
    # The registered reference suites: is `standard` within 0.5 point of `thorough`?
    "suites": robust.SUITES["standard"] + robust.SUITES["thorough"],
    # `thorough` with twice its steps and restarts: is `thorough` itself converged?
    "thorough_x2": robust.scaled_suite("thorough", 2),
}


def union(members) -> tuple:
  """The members once each (equal options but restarts: the most restarts)."""
  out: dict = {}
  for attack, direction, options in members:
    options = dict(options)
    restarts = int(options.pop("restarts", 1))
    key = (attack, direction, repr(sorted(options.items())))
    out[key] = (max(out.get(key, (0, None))[0], restarts), options)
  return tuple((a, d, {**o, "restarts": r}) for (a, d, _), (r, o) in out.items())


def arp_of(raw: robust.Candidates, rows) -> float:
  """The robust ARP over the clean input and the candidates ``rows`` (the summary's number)."""
  rows = [0] + list(rows)
  states = {t: {k: v[rows] for k, v in leaves.items()} for t, leaves in raw.states.items()}
  sel = worst_case.select(raw.tasks, states, raw.groups, raw.scores[rows], raw.available[rows],
                          worst_case.arp_objective(raw.tasks, raw.clean))
  return float(sel.value[0])


def greedy(runs: dict, limit: int) -> list[tuple[str, float, dict]]:
  """Candidates in the order of the largest summed ARP gain per pass; each with the passes per
  image and the robust ARP per run after it."""
  first = next(iter(runs.values()))
  num_tasks = len(first.tasks)
  cost = {i: c.passes(num_tasks) for i, c in enumerate(first.candidates, 1)}
  chosen, current, out = [], {k: arp_of(r, []) for k, r in runs.items()}, []
  passes = 1.0
  while len(chosen) < min(limit, len(cost)):
    best = None
    for i in cost:
      if i in chosen:
        continue
      values = {k: arp_of(r, chosen + [i]) for k, r in runs.items()}
      gain = sum(values[k] - current[k] for k in runs) / cost[i]
      if best is None or gain > best[0]:
        best = (gain, i, values)
    _, i, current = best
    chosen.append(i)
    passes += cost[i]
    out.append((first.names[i], passes, current))
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="", help="quickstart argument, e.g. 'smoke'")
  parser.add_argument("--workdir", default="runs/quickstart")
  parser.add_argument("--eps", type=float, nargs="+", default=[8.0])
  parser.add_argument("--pool", nargs="+", default=["design"], choices=sorted(POOLS))
  parser.add_argument("--save", default="", help="directory to pickle each pool run into")
  parser.add_argument("--load", default="", help="directory of pickled pool runs (no attacks)")
  parser.add_argument("--greedy", type=int, default=12, help="candidates the greedy design adds")
  parser.add_argument("--max-batches", type=int, default=None,
                      help="evaluate on the first N test batches only (default: all)")
  args = parser.parse_args()
  jax.config.update("jax_compilation_cache_dir", str(pathlib.Path(
      "~/.cache/mtajax/jax").expanduser()))
  members = union([m for p in args.pool for m in POOLS[p]])
  runs = {}
  if args.load:
    for path in sorted(pathlib.Path(args.load).glob("*.pkl")):
      with open(path, "rb") as f:
        runs[path.stem] = pickle.load(f)
  else:
    config = quickstart.get_config(args.config or None)
    config.workdir, config.eps = args.workdir, tuple(args.eps)
    config.eval_max_batches = args.max_batches
    _, targets = sweep.run(config, train_only=True)
    for target in targets:
      for eps in args.eps:
        label = f"{ensure.model_id(target.t)}_eps{eps:g}"
        start = time.perf_counter()
        raw = robust.attack_all(
            target.predict, target.state, loaders.eval_batches(config, target.t),
            target.loaded.tasks, eps=eps, bounds=preprocess.input_bounds(), suite=members,
            key=jax.random.key(config.robust.seed))
        print(f"{label}: {len(raw.candidates)} candidates in {time.perf_counter() - start:.0f} s",
              flush=True)
        runs[label] = raw
        if args.save:
          pathlib.Path(args.save).mkdir(parents=True, exist_ok=True)
          with open(pathlib.Path(args.save) / f"{label}.pkl", "wb") as f:
            pickle.dump(raw, f)
  print(f"\n{'run':28} " + " ".join(f"{s:>16}" for s in robust.SUITES) + "   (ARP, passes/img)")
  for label, raw in runs.items():
    cells = []
    for name in robust.SUITES:
      try:
        ev = robust.summarise(raw, only=raw.members(name))
        cells.append(f"{ev.arp:7.2f} {ev.passes_per_image:6.0f}{'' if ev.converged else '*'}")
      except ValueError:
        cells.append(f"{'-':>16}")
    print(f"{label:28} " + " ".join(f"{c:>16}" for c in cells))
  print("(* not converged by its own rule)")
  print(f"\ngreedy design, whole pool: " + ", ".join(
      f"{k} {arp_of(r, range(1, len(r.names))):.2f}" for k, r in runs.items()))
  for name, passes, values in greedy(runs, args.greedy):
    print(f"  + {name:34} {passes:7.0f} passes/img  " +
          " ".join(f"{v:6.2f}" for v in values.values()), flush=True)


if __name__ == "__main__":
  main()
