"""Choosing the robust suites by measurement: every candidate of a pool once, then any sub-suite.

    python benchmarks/suite_design.py [--eps 4 8] [--pool POOL ...] [--max-batches N]
                                      [--save DIR] [--load DIR ...] [--greedy K]
                                      [--layouts L ...] [--recipe NAME] [--chunk N]
                                      [--deadline UNIX_S] [--attack-only]
                                      [--restart-curve N]

Per quickstart model and ε, runs every candidate of the pools (:data:`POOLS`) once
(:func:`mtajax.robust.attack_all`) and prints, for each registered suite that is a sub-suite of the
pool, its robust ARP and its passes per image (:func:`mtajax.robust.summarise` of its candidates
equals its own evaluation: a candidate's random start depends only on its restart index). Then a
greedy design: starting from nothing, it adds the candidate with the largest robust-ARP gain per
pass, summed over the models and ε, and prints the robust ARP of each prefix per (model, ε) —
the cheapest prefix within 0.5 point of the whole pool everywhere is the suite to take. Before
it, per run, the whole pool's robust ARP before and after the polish (``--restart-curve N``:
also with the first 1/N, 2/N, .. of each member's restarts, the worst case's growth with the
number of candidate runs at a fixed attack strength). ``--save`` keeps each pool run (pickle)
so that ``--load`` redoes the analysis without attacking again (runs of one model and ε in
several folders are merged: the union of their candidates).

For an accelerator: ``--chunk 128`` attacks all test images at once; ``--deadline`` starts no run
that would end after that time, judged by the previous run's seconds (a run whose pickle is in
``--save`` already is loaded, so a killed job resumes); ``--attack-only`` leaves the analysis to a
later ``--load``. Beside each pickle a JSON holds the run's seconds, its compile seconds and one
compiled forward + backward pass's seconds per image. ``--layouts`` and ``--recipe`` (a
``configs/defend.py`` recipe: an adversarially trained model) choose models the suites were not
designed on.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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
from benchmarks import robust_eval  # noqa: E402
from configs import defend  # noqa: E402
from configs import quickstart  # noqa: E402
from mtajax import loaders  # noqa: E402
from mtajax import phases  # noqa: E402
from mtajax import robust  # noqa: E402
from mtajax import sweep  # noqa: E402
from mtajax.data import preprocess  # noqa: E402
from mtajax.train import ensure  # noqa: E402

AA = robust.APGD_AA
LOSSES = ("default", "segpgd", "js", "cospgd", "js_relative")


def apgd(direction: str, num_steps: int, loss: str = "default", restarts: int = 1) -> tuple:
  """A suite member: AutoAttack's APGD along ``direction`` with attack loss ``loss``."""
  options = {**AA, "num_steps": num_steps, "restarts": restarts}
  return ("apgd", direction, options if loss == "default" else {**options, "attack_loss": loss})


# A candidate `thorough` built on long runs: 1000-step APGD along GB-MTA with every loss, 2 restarts
# each, and 1000-step Total and Single-x (about 28,000 passes per image).
LONG_THOROUGH = tuple(apgd("gbmta", 1000, loss, 2) for loss in LOSSES) + (
    apgd("total", 1000), apgd("single", 1000))
POOLS = {
    # The first design's pool: `fast`, its members 6x longer twice (now `standard`), and shorter /
    # other-loss variants to choose from.
    "design": (
        robust.SUITES["standard"]
        + robust.SUITES["fast"]
        + tuple(("apgd", "gbmta", {**AA, "num_steps": 50, **loss})
                for loss in ({}, {"attack_loss": "segpgd"}, {"attack_loss": "js"},
                             {"attack_loss": "cospgd"}))
        # JS on the segmentation head, the relative error on the regression heads.
        + (("apgd", "gbmta", {**AA, "num_steps": 100, "attack_loss": "js_relative"}),)),
    # `fast` and `standard` in one run (19,331 passes per image).
    "suites": robust.SUITES["fast"] + robust.SUITES["standard"],
    # `thorough` (12x standard): with "suites", is `standard` within 0.5 point of it?
    "thorough": robust.SUITES["thorough"],
    # `fast` 3x longer with 4x the restarts, and 2x longer with 6x: `standard`'s passes spent on
    # more, shorter candidate runs (35,820 passes per image for the two).
    "breadth": (robust.scaled_suite("fast", 3, restarts=4)
                + robust.scaled_suite("fast", 2, restarts=6)),
    # `thorough` with twice its steps and restarts: is `thorough` itself converged?
    "thorough_x2": robust.scaled_suite("thorough", 2),
    # Long runs to design from on an accelerator: `fast`, 300-step runs of every loss and
    # direction, and LONG_THOROUGH (34,957 passes per image).
    "long": (robust.SUITES["fast"] + tuple(apgd("gbmta", 300, loss) for loss in LOSSES)
             + (apgd("total", 300), apgd("single", 300)) + LONG_THOROUGH),
    # LONG_THOROUGH with twice its steps and restarts (112,057 passes per image).
    "long_x2": robust.scaled_suite(LONG_THOROUGH, 2),
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


def merge(a: robust.Candidates, b: robust.Candidates) -> robust.Candidates:
  """One pool of two runs on the same model, ε and images: ``a``'s rows, then ``b``'s candidates
  that ``a`` lacks (same attack, options and restart: the same candidate)."""
  def clean(r):
    return [v for ms in r.clean.values() for v in ms.values()]
  if (not np.array_equal(a.groups, b.groups) or a.clean.keys() != b.clean.keys()
      or not np.allclose(clean(a), clean(b), rtol=1e-4)):  # another device: float rounding
    raise ValueError("merge() takes runs of one model, ε and image set.")
  have = {(c.program, c.restart, c.index) for c in a.candidates}
  rows = [i for i, c in enumerate(b.candidates, 1) if (c.program, c.restart, c.index) not in have]
  cat = lambda x, y: np.concatenate([x, y[rows]])  # pylint: disable=unnecessary-lambda-assignment
  names = list(a.names)
  for i in rows:  # Labels are per run (e.g. '~1'); a clash gets a prime.
    names.append(b.names[i] + "'" * sum(n.rstrip("'") == b.names[i] for n in names))
  return dataclasses.replace(
      a, names=names,
      candidates=a.candidates + tuple(b.candidates[i - 1] for i in rows),
      states={t: {k: cat(v, b.states[t][k]) for k, v in leaves.items()}
              for t, leaves in a.states.items()},
      scores=cat(a.scores, b.scores), drops={t: cat(v, b.drops[t]) for t, v in a.drops.items()},
      available=cat(a.available, b.available), best_step=cat(a.best_step, b.best_step),
      metrics=a.metrics + [b.metrics[i] for i in rows],
      seconds=None if a.seconds is None or b.seconds is None else cat(a.seconds, b.seconds))


def arp_of(raw: robust.Candidates, rows, polish: bool = False) -> float:
  """The robust ARP over the clean input and the candidates ``rows``: the greedy search's, or
  (``polish``) after the polishing local search, as the summary's number."""
  return float(raw.worst_case(rows, polish=polish).value[0])


def restart_curve(raw: robust.Candidates, parts: int) -> list[tuple[int, float, float]]:
  """The polished robust ARP of the pool with the first k/``parts`` of each member's restarts
  (k = 1 .. parts): (candidates, passes per image, robust ARP) per k — how the worst case grows
  with the number of candidate runs at a fixed attack strength."""
  num_tasks = len(raw.tasks)
  out = []
  for k in range(1, parts + 1):
    rows = [i + 1 for i in robust.first_restarts(raw.candidates, k, parts)]
    out.append((len(rows), 1.0 + sum(raw.candidates[i - 1].passes(num_tasks) for i in rows),
                arp_of(raw, rows, polish=True)))
  return out


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


def attack(args, members) -> dict:
  """Every (model, ε) run of ``members``, each pickled into ``args.save`` with a JSON of its
  seconds beside it; runs already there are loaded, and none starts that would end after
  ``args.deadline`` if it took as long as the previous one."""
  config = quickstart.get_config(args.config or None)
  config.workdir, config.eps = args.workdir, tuple(args.eps)
  config.eval_max_batches = args.max_batches
  if args.layouts:
    config.layouts = tuple(args.layouts)
  if args.recipe:
    config.train.adv.update(defend.get_config().defend.recipes[args.recipe])
  save = pathlib.Path(args.save) if args.save else None
  _, targets = sweep.run(config, train_only=True)
  runs, last = {}, 0.0
  for target in targets:
    for eps in args.eps:
      label = f"{ensure.model_id(target.t)}_eps{eps:g}"
      if save and (save / f"{label}.pkl").exists():
        with open(save / f"{label}.pkl", "rb") as f:
          runs[label] = pickle.load(f)
        continue
      if args.deadline is not None and time.time() + last > args.deadline:
        print(f"{label}: not run (past the deadline)", flush=True)
        continue
      start = time.perf_counter()
      with phases.CompileClock() as clock:
        raw = robust.attack_all(
            target.predict, target.state, loaders.eval_batches(config, target.t),
            target.loaded.tasks, eps=eps, bounds=preprocess.input_bounds(), suite=members,
            key=jax.random.key(config.robust.seed), chunk=args.chunk)
      seconds = last = time.perf_counter() - start
      batch = robust_eval.timing_batch(config, target, raw.chunk)
      timing = {"seconds": seconds, "compile_s": clock.seconds, "chunk": raw.chunk,
                "pass_s": robust_eval.pass_seconds(target.predict, target.state, batch,
                                                   target.loaded.tasks),
                "devices": str(jax.devices())}
      print(f"{label}: {len(raw.candidates)} candidates in {seconds:.0f} s "
            f"(compile {clock.seconds:.0f} s)", flush=True)
      runs[label] = raw
      if save:
        save.mkdir(parents=True, exist_ok=True)
        (save / f"{label}.json").write_text(json.dumps(timing))
        with open(save / f"{label}.pkl.tmp", "wb") as f:
          pickle.dump(raw, f)
        (save / f"{label}.pkl.tmp").replace(save / f"{label}.pkl")
  return runs


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="", help="quickstart argument, e.g. 'smoke'")
  parser.add_argument("--workdir", default="runs/quickstart")
  parser.add_argument("--eps", type=float, nargs="+", default=[8.0])
  parser.add_argument("--pool", nargs="+", default=["design"], choices=sorted(POOLS))
  parser.add_argument("--save", default="", help="directory to pickle each pool run into")
  parser.add_argument("--load", nargs="+", default=[],
                      help="directories of pickled pool runs (no attacks); runs of one model and "
                      "ε in several are merged into one pool")
  parser.add_argument("--greedy", type=int, default=12, help="candidates the greedy design adds")
  parser.add_argument("--max-batches", type=int, default=None,
                      help="evaluate on the first N test batches only (default: all)")
  parser.add_argument("--layouts", type=int, nargs="+", default=None,
                      help="these layouts instead of the config's")
  parser.add_argument("--recipe", default="", help="a configs/defend.py recipe, e.g. pgd_gbmta")
  parser.add_argument("--chunk", type=int, default=None, help="images per attacked chunk")
  parser.add_argument("--deadline", type=float, default=None,
                      help="start no run that would end after this time (seconds since the "
                      "epoch), judged by the previous run's seconds")
  parser.add_argument("--attack-only", action="store_true", help="save the runs, skip the analysis")
  parser.add_argument("--restart-curve", type=int, default=0, metavar="N",
                      help="also the polished robust ARP with the first 1/N, 2/N, .. of each "
                      "member's restarts")
  args = parser.parse_args()
  jax.config.update("jax_compilation_cache_dir", str(pathlib.Path(
      "~/.cache/mtajax/jax").expanduser()))
  members = union([m for p in args.pool for m in POOLS[p]])
  runs = {}
  if args.load:
    for folder in args.load:
      for path in sorted(pathlib.Path(folder).glob("*.pkl")):
        with open(path, "rb") as f:
          raw = pickle.load(f)
        runs[path.stem] = merge(runs[path.stem], raw) if path.stem in runs else raw
  else:
    runs = attack(args, members)
  if args.attack_only:
    return
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
  for label, raw in runs.items():
    whole = range(1, len(raw.names))
    print(f"whole pool {label}: {len(whole)} candidates, greedy search "
          f"{arp_of(raw, whole):.2f}, polished {arp_of(raw, whole, polish=True):.2f}")
    if args.restart_curve:
      print("  the first k/N of each member's restarts (candidates, passes/img, polished ARP): " +
            ", ".join(f"{n} {p:.0f} {v:.2f}" for n, p, v in restart_curve(raw, args.restart_curve)),
            flush=True)
  print("\ngreedy design (the greedy search's robust ARP per run after each candidate):")
  for name, passes, values in greedy(runs, args.greedy):
    print(f"  + {name:34} {passes:7.0f} passes/img  " +
          " ".join(f"{v:6.2f}" for v in values.values()), flush=True)


if __name__ == "__main__":
  main()
