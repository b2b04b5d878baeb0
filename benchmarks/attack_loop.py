"""Attack loops judged on compile + run together: ``lax.scan`` unrolled, rolled, and the Python loop.

    python benchmarks/attack_loop.py [--size 32] [--width 8] [--batch 16] [--batches 8]
                                   [--steps 10] [--repeats 3]

For each loop kind (``loop='unrolled'``, ``'rolled'``, ``'python'``: :mod:`mtajax.attacks.loop`) and
attack (GB-MTA PGD, SignTotal APGD) on the quickstart's ``small`` model (AS and IND, 3 heads): the
first call (trace + compile + one run, in a fresh compile cache: ``jax.clear_caches`` before
it; the persistent cache is off) and the median of ``--repeats`` later
calls, interleaved over the kinds; then the cost of a quickstart-like use: first call +
(batches × 2 ε − 1) runs. Ratios are to the unrolled scan, measured in this one run.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtajax import attacks
from mtajax import directions as D
from mtajax import models
from mtajax import tasks as tasks_lib
from mtajax.data import preprocess
from mtajax.tasks import task_sets

KINDS = attacks.LOOPS


def problem(size: int, batch: int, layout: int, width: int):
  tasks = tuple(t for t in task_sets.synthetic_tasks(5, num_classes=13)
                if t.name in ("segment_semantic", "normal", "depth_zbuffer"))
  model = models.build_model("small", {t.name: t.channels for t in tasks}, layout, width=width,
                             rngs=nnx.Rngs(0))
  apply, params, stats = models.pure_apply(model)
  predict = lambda state, x: apply(state[0], state[1], x, train=False)[0]  # pylint: disable=unnecessary-lambda-assignment
  rng = np.random.default_rng(0)
  hw = (batch, size, size)
  labels = {"segment_semantic": rng.integers(0, 13, hw).astype(np.int32),
            "normal": rng.normal(size=hw + (3,)).astype(np.float32),
            "depth_zbuffer": rng.uniform(0.5, 4, hw).astype(np.float32),
            "depth_zbuffer_mask": np.ones(hw, np.float32), "normal_mask": np.ones(hw, np.float32)}
  x = jnp.asarray(rng.uniform(-1, 1, hw + (3,)), jnp.float32)
  return predict, (params, stats), x, {k: jnp.asarray(v) for k, v in labels.items()}, tasks


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", type=int, default=32)
  parser.add_argument("--width", type=int, default=8)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--batches", type=int, default=8)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  jax.config.update("jax_enable_compilation_cache", False)
  print(f"{args.size}², width {args.width}, batch {args.batch}, {args.steps} steps, "
        f"{jax.devices()[0].platform}; ratios to the unrolled scan")
  print(f"{'model':<5} {'attack':<17} {'loop':<9} {'first s':>8} {'run ms':>8} "
        f"{'use s':>7} {'first ×':>8} {'run ×':>6} {'use ×':>6}")
  for layout, name in ((0, "AS"), (2, "IND")):
    predict, state, x, labels, tasks = problem(args.size, args.batch, layout, args.width)
    for attack, direction in (("pgd", D.gbmta()), ("apgd", D.sign_total())):
      loss_fn = tasks_lib.make_loss_fn(functools.partial(predict, state), tasks,
                                       direction.reduction)
      call = {kind: functools.partial(
          attacks.by_name(attack), loss_fn, x, labels, direction=direction, eps=8.0 / 127.5,
          bounds=preprocess.input_bounds(), num_steps=args.steps, loop=kind)
              for kind in KINDS}
      first, runs = {}, {k: [] for k in KINDS}
      for kind in KINDS:
        jax.clear_caches()
        start = time.perf_counter()
        jax.block_until_ready(call[kind]().x_adv)
        first[kind] = time.perf_counter() - start
      for kind in KINDS:  # untimed: recompiles what the later kinds' clear_caches dropped
        jax.block_until_ready(call[kind]().x_adv)
      for _ in range(args.repeats):  # interleaved
        for kind in KINDS:
          start = time.perf_counter()
          jax.block_until_ready(call[kind]().x_adv)
          runs[kind].append(time.perf_counter() - start)
      runs = {k: statistics.median(v) for k, v in runs.items()}
      use = {k: first[k] + (args.batches * 2 - 1) * runs[k] for k in KINDS}
      for kind in KINDS:
        print(f"{name:<5} {attack + ' ' + direction.name:<17} {kind:<9} {first[kind]:8.2f} "
              f"{runs[kind] * 1e3:8.0f} {use[kind]:7.2f} {first[kind] / first['unrolled']:8.2f} "
              f"{runs[kind] / runs['unrolled']:6.2f} {use[kind] / use['unrolled']:6.2f}",
              flush=True)


if __name__ == "__main__":
  main()
