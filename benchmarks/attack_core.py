"""Cost of the attack directions and of the attack loop, as ratios measured in one run.

    python benchmarks/attack_core.py [--sizes 64 128] [--tasks 3 5] [--repeats 7]

On the small multi-head conv net of :mod:`mtajax.testing` (batch 8) it prints, per input size and
number of heads:
* the step time of each direction relative to ``total`` (one direction evaluation = forward +
  input-gradient backward); the balancers (mgda ... nash_mtl) need T pullbacks like
  ``sign_total (loop)``; their per-image T×T work alone (weights from the batch's Gram matrices)
  is timed as ``<rule>: T×T weights only``;
* the time of a full 10-step GB-MTA PGD relative to 10x (forward + backward), for the loop forms
  ``lax.scan`` rolled, ``lax.scan`` unrolled and a Python loop of jitted steps, for the L2 threat
  model, and for 10-step APGD (reference and AutoAttack variants).
Variants are timed interleaved (round robin) and the median of ``--repeats`` rounds is reported,
because the machine is noisy.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

import mtajax  # noqa: F401  (applies the XLA:CPU workaround before JAX starts)
from mtajax import attacks
from mtajax.directions import balancing
from mtajax import directions as D
from mtajax import platform
from mtajax import testing
from mtajax.attacks import common

BOUNDS = (jnp.full(3, -104.0), jnp.full(3, 151.0))
EPS = 8.0


def _timed(fn) -> float:
  t = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - t


def _interleaved(variants: dict, repeats: int) -> dict[str, float]:
  for fn in variants.values():  # Compile and warm up.
    jax.block_until_ready(fn())
  times = {k: [] for k in variants}
  for _ in range(repeats):
    for k, fn in variants.items():
      times[k].append(_timed(fn))
  return {k: statistics.median(v) for k, v in times.items()}


def direction_costs(x, labels, repeats):
  dirs = {"total": D.total(), "single_normal": D.single("normal"), "gbmta (log)": D.gbmta(),
          "gbmta (per-task)": D.gbmta(method="per_task"), "sign_total (loop)": D.sign_total(),
          "sign_total (vmap)": D.sign_total("vmap"),
          **{n: D.by_name(n) for n in balancing.RULES}}
  fns = {k: jax.jit(lambda x_, d=d: d(testing.loss_fn, x_, labels)[0]) for k, d in dirs.items()}
  fns["forward only"] = jax.jit(lambda x_: testing.loss_fn(x_, labels))
  variants = {k: (lambda f=f: f(x)) for k, f in fns.items()}
  grads, _ = D.per_task_grads(testing.loss_fn, x, labels)
  grams = jax.vmap(balancing.gram, in_axes=1)(grads)  # (B, T, T), the balancers' only input
  for name, rule in balancing.RULES.items():
    solve = jax.jit(jax.vmap(rule))
    variants[f"{name}: T×T weights only"] = lambda s=solve: s(grams)
  return _interleaved(variants, repeats)


def loop_costs(x, labels, repeats, steps=10):
  direction = D.gbmta()
  grad = jax.jit(lambda x_: D.total()(testing.loss_fn, x_, labels)[0])

  @jax.jit
  def one_step(x_, x0):
    d, _ = direction(testing.loss_fn, x_, labels)
    return common.step(x_, x0, d, EPS / steps, EPS, BOUNDS)

  def python_loop():
    x_ = x
    for _ in range(steps):
      x_ = one_step(x_, x)
    return x_

  def pgd(loop, norm="linf", eps=EPS):
    return lambda: attacks.pgd(testing.loss_fn, x, labels, direction=direction, eps=eps,
                               bounds=BOUNDS, num_steps=steps, loop=loop, norm=norm).x_adv

  def apgd(variant):
    return lambda: attacks.apgd(testing.loss_fn, x, labels, direction=direction, eps=EPS,
                                bounds=BOUNDS, num_steps=steps, loop="unrolled",
                                variant=variant).x_adv
  return _interleaved({
      f"{steps}x total direction": lambda: [grad(x) for _ in range(steps)][-1],
      "pgd scan rolled": pgd("rolled"),
      "pgd scan unrolled": pgd("unrolled"),
      "pgd scan unrolled, l2": pgd("unrolled", "l2", EPS * x[0].size ** 0.5),
      "python loop of jitted steps": python_loop,
      "apgd reference, unrolled": apgd("reference"),
      "apgd autoattack, unrolled": apgd("autoattack"),
  }, repeats)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
  parser.add_argument("--tasks", type=int, nargs="+", default=[3, 5])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--width", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--skip-loops", action="store_true", help="only the direction step costs")
  args = parser.parse_args()
  print(f"backend={jax.default_backend()} devices={jax.devices()} jax={jax.__version__} "
        f"default loop={platform.default_loop()}")
  for size in args.sizes:
    for num_tasks in args.tasks:
      key = jax.random.PRNGKey(size + num_tasks)
      params = testing.init(key, num_tasks, args.width)
      labels = (params, testing.random_labels(key, params, args.batch, size))
      x = jax.random.uniform(key, (args.batch, size, size, 3), minval=-100.0, maxval=100.0)
      print(f"\n== {size}x{size}, {num_tasks} heads, batch {args.batch}, median of "
            f"{args.repeats} interleaved rounds ==")
      costs = direction_costs(x, labels, args.repeats)
      base = costs["total"]
      print(f"{'direction step':28s} {'time (ms)':>10s} {'x total':>8s}")
      for k, v in costs.items():
        print(f"{k:28s} {1e3 * v:10.2f} {v / base:8.3f}")
      if args.skip_loops:
        continue
      loops = loop_costs(x, labels, args.repeats)
      base = loops["10x total direction"]
      print(f"{'10-step GB-MTA PGD':28s} {'time (ms)':>10s} {'x 10 fwd+bwd':>12s}")
      for k, v in loops.items():
        print(f"{k:28s} {1e3 * v:10.1f} {v / base:12.3f}")


if __name__ == "__main__":
  main()
