"""Robust evaluation vs the paper grid on the quickstart's models, measured in one run.

    python benchmarks/robust_eval.py [--config configs/quickstart.py] [--workdir runs/quickstart]
                                     [--eps 8] [--suite standard]

Trains the config's missing models (as the main job does, into ``--workdir``), then per model runs
the paper grid at ε (every attack × direction of the config, kept in memory, not stored) and the
robust suite on the same test images, and prints per model: the robust ARP, the best grid cell,
whether robust ≥ best, and the compute ratio suite ÷ grid (forward + backward passes per image,
and wall seconds incl. compilation).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
import tqdm

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# pylint: disable=g-import-not-at-top,wrong-import-position
import mtajax  # noqa: E402,F401
from configs import quickstart  # noqa: E402
from mtajax import loaders  # noqa: E402
from mtajax import results  # noqa: E402
from mtajax import robust  # noqa: E402
from mtajax import robust_sweep  # noqa: E402
from mtajax import sweep  # noqa: E402
from mtajax.data import preprocess  # noqa: E402
from mtajax.train import ensure  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="", help="quickstart argument, e.g. 'smoke'")
  parser.add_argument("--workdir", default="runs/quickstart")
  parser.add_argument("--eps", type=float, default=8.0)
  parser.add_argument("--suite", default="standard")
  args = parser.parse_args()
  jax.config.update("jax_compilation_cache_dir", str(pathlib.Path(
      "~/.cache/mtajax/jax").expanduser()))
  config = quickstart.get_config(args.config or None)
  config.workdir, config.eps = args.workdir, (args.eps,)
  config.robust.suite = args.suite
  _, targets = sweep.run(config, train_only=True)
  store = results.Store(pathlib.Path(args.workdir) / "no-such-file.jsonl", write=False)
  rows = []
  for target in targets:
    start = time.perf_counter()
    cells = sweep.model_records(config, target, store, tqdm.tqdm(disable=True))[1:]  # Not clean.
    grid_s = time.perf_counter() - start
    model = ensure.model_id(target.t)
    best = max(cells, key=lambda r: r["arp"])
    ev = robust.evaluate(target.predict, target.state,
                         loaders.eval_batches(config, target.t),
                         target.loaded.tasks, eps=args.eps, bounds=preprocess.input_bounds(),
                         suite=args.suite, key=jax.random.key(config.robust.seed))
    grid_passes = robust_sweep.grid_passes(config, len(target.loaded.tasks))
    rows.append((model, ev, best, grid_passes, grid_s))
  print(f"\nε={args.eps:g}, suite {args.suite!r}, {len(sweep.grid(config))} grid cells; "
        f"devices {jax.devices()}")
  print(f"{'model':24} {'robust ARP':>10} {'best grid cell':>30} {'≥':>3} "
        f"{'passes ratio':>12} {'seconds ratio':>13}")
  for model, ev, best, grid_passes, grid_s in rows:
    cell = f"{best['arp']:.2f} ({best['attack']} {best['direction']})"
    print(f"{model:24} {ev.arp:10.2f} {cell:>30} {'yes' if ev.arp >= best['arp'] else 'NO':>3} "
          f"{ev.passes_per_image / grid_passes:12.2f} {ev.seconds / grid_s:13.2f}")
    alone = ", ".join(f"{k} {v:.2f}" for k, v in ev.candidate_arp.items() if v is not None)
    print(f"{'':24} candidates alone: {alone}")
    print(f"{'':24} wins: {ev.wins}; envelope: "
          f"{ {t: round(v, 2) for t, v in ev.envelope.items()} }")


if __name__ == "__main__":
  main()
