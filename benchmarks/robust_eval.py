"""Robust evaluation vs the paper grid, or its convergence, on the quickstart's models, in one run.

    python benchmarks/robust_eval.py [--config smoke] [--workdir runs/quickstart]
                                     [--eps 8] [--suite standard]
    python benchmarks/robust_eval.py --convergence [--eps 4 8] [--suite standard]
                                     [--reference thorough] [--chunk 128]

Trains the config's missing models (as the main job does, into ``--workdir``), then per model runs
the paper grid at ε (every attack × direction of the config, kept in memory, not stored) and the
robust suite on the same test images, and prints per model: the robust ARP, the best grid cell,
whether robust ≥ best, and the compute ratio suite ÷ grid (forward + backward passes per image,
and wall seconds incl. compilation).

With ``--convergence``, per model and ε it runs ``--suite``, ``--reference`` and the reference with
twice the steps and restarts (:func:`mtajax.robust.scaled_suite`) and prints each one's robust ARP,
its gap to the previous one, its ``restart_gain`` (``restarts+``), passes per image, compile and
run seconds (compile: JAX's tracing, lowering and compilation events, :mod:`jax.monitoring`), the
run seconds over passes × images × one compiled pass's seconds, and the ``converged`` flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import pathlib
import sys
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
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
from mtajax.tasks import loss_fn as loss_fn_lib  # noqa: E402
from mtajax.train import ensure  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Measured:
  """One robust evaluation: the result, and its wall time as compile and run seconds."""
  label: str
  result: robust.RobustEvaluation
  compile_s: float
  run_s: float


def measure_suites(predict, state, batches, tasks, *, eps: float,
                   suites: Sequence[tuple[str, Any]], key: jax.Array,
                   chunk: int | None = None) -> list[Measured]:
  """Each (label, suite) on the same images; ``batches()`` gives fresh batches; ``chunk``: images
  per attacked chunk (:func:`mtajax.robust.evaluate`)."""
  out = []
  for label, suite in suites:
    ev = robust.evaluate(predict, state, batches(), tasks, eps=eps,
                         bounds=preprocess.input_bounds(), suite=suite, key=key, chunk=chunk)
    out.append(Measured(label, ev, ev.compile_seconds, ev.seconds - ev.compile_seconds))
  return out


def pass_seconds(predict, state, batch, tasks, repeats: int = 7) -> float:
  """Seconds of one forward + backward pass per image once compiled (the GB-MTA log-form loss of
  ``batch``; median of ``repeats`` timed calls): what a suite's run seconds are measured against."""
  loss_fn = loss_fn_lib.make_loss_fn(functools.partial(predict, state), tasks, "image")
  grad = jax.jit(jax.grad(lambda x, b: sum(jnp.sum(jnp.log(v + 1e-12))
                                           for v in loss_fn(x, b).values())))
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  jax.block_until_ready(grad(batch["image"], batch))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(grad(batch["image"], batch))
    times.append(time.perf_counter() - start)
  # A pass is a forward or a backward (the suites' count): one forward + backward = 2 passes.
  return float(np.median(times)) / len(batch["image"]) / 2


def timing_batch(config, target, chunk: int | None) -> dict[str, np.ndarray]:
  """The first ``chunk`` test images (None: the first batch) as one batch: a chunk as attacked,
  for :func:`pass_seconds`."""
  batches = [{k: v for k, v in b.items() if k != "example_weight"}
             for b in loaders.eval_batches(config, target.t)]
  size = chunk or len(batches[0]["image"])
  return {k: np.concatenate([b[k] for b in batches])[:size] for k in batches[0]}


def convergence_suites(suite: str, reference: str) -> list[tuple[str, Any]]:
  """``suite``, ``reference`` and the reference with twice the steps and restarts."""
  return [(suite, suite), (reference, reference),
          (f"{reference} x2", robust.scaled_suite(reference, 2))]


def convergence_table(model: str, eps: float, rows: list[Measured], images: int,
                      pass_s: float) -> str:
  """The measured suites of one model and ε, each with its gap to the previous one, its
  ``restart_gain`` (what the second half of its restarts added; – where none has two) and its run
  seconds over passes × images × one pass's seconds (1.0: nothing but the passes)."""
  lines = [f"{model} ε={eps:g}",
           f"  {'suite':20} {'robust ARP':>10} {'gap':>7} {'restarts+':>9} {'passes/img':>10} "
           f"{'compile s':>9} {'run s':>8} {'run/passes':>10} converged"]
  previous = None
  for m in rows:
    gap = "" if previous is None else f"{m.result.arp - previous:+7.2f}"
    restarts = "–" if m.result.restart_gain is None else f"{m.result.restart_gain:+.2f}"
    lines.append(f"  {m.label:20} {m.result.arp:10.2f} {gap:>7} {restarts:>9} "
                 f"{m.result.passes_per_image:10.0f} {m.compile_s:9.1f} {m.run_s:8.1f} "
                 f"{m.run_s / (m.result.passes_per_image * images * pass_s):10.2f} "
                 f"{'yes' if m.result.converged else 'NO'}")
    previous = m.result.arp
  return "\n".join(lines)


def convergence(config, targets, eps_values, suite: str, reference: str,
                chunk: int | None = None) -> None:
  """Prints :func:`convergence_table` per model and ε."""
  print(f"\nconvergence: {suite} vs {reference} vs {reference} x2; devices {jax.devices()}")
  for target in targets:
    for eps in eps_values:
      rows = measure_suites(
          target.predict, target.state,
          lambda target=target: loaders.eval_batches(config, target.t),
          target.loaded.tasks, eps=eps, suites=convergence_suites(suite, reference),
          key=jax.random.key(config.robust.seed), chunk=chunk)
      pass_s = pass_seconds(target.predict, target.state,
                            timing_batch(config, target, chunk),
                            target.loaded.tasks)
      images = len({r["image"] for r in rows[0].result.images})
      print(convergence_table(ensure.model_id(target.t), eps, rows, images, pass_s), flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="", help="quickstart argument, e.g. 'smoke'")
  parser.add_argument("--workdir", default="runs/quickstart")
  parser.add_argument("--eps", type=float, nargs="+", default=[8.0])
  parser.add_argument("--suite", default="standard")
  parser.add_argument("--convergence", action="store_true",
                      help="measure --suite against --reference and the doubled reference")
  parser.add_argument("--reference", default="thorough")
  parser.add_argument("--chunk", type=int, default=None,
                      help="images per attacked chunk (e.g. 128 on a GPU: all at once)")
  args = parser.parse_args()
  for name in {args.suite, args.reference}:
    if name not in robust.SUITES:
      parser.error(f"unknown suite {name!r}; use one of {sorted(robust.SUITES)}.")
  if not args.convergence and len(args.eps) > 1:
    parser.error("the grid comparison takes one --eps; --convergence takes several.")
  jax.config.update("jax_compilation_cache_dir", str(pathlib.Path(
      "~/.cache/mtajax/jax").expanduser()))
  config = quickstart.get_config(args.config or None)
  config.workdir, config.eps = args.workdir, tuple(args.eps)
  config.robust.suite = args.suite
  _, targets = sweep.run(config, train_only=True)
  if args.convergence:
    convergence(config, targets, args.eps, args.suite, args.reference, args.chunk)
    return
  eps = args.eps[0]
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
                         target.loaded.tasks, eps=eps, bounds=preprocess.input_bounds(),
                         suite=args.suite, key=jax.random.key(config.robust.seed))
    grid_passes = robust_sweep.grid_passes(config, len(target.loaded.tasks))
    rows.append((model, ev, best, grid_passes, grid_s))
  print(f"\nε={eps:g}, suite {args.suite!r}, {len(sweep.grid(config))} grid cells; "
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
