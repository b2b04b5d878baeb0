"""Per-call cost of a compiled program that carries a ``checkify.debug_check``: ``jax.jit`` against
:func:`mtajax.dispatch.jit` (the check discharged), on the quickstart's models.

    python benchmarks/dispatch.py [--layouts 0 2] [--calls 200] [--repeats 5]

The program is a forward pass of the ``small`` model (all its weights as arguments, as the attack
loop's evaluations and the train step take them) on a tiny batch (1 image, 8²: the call's own cost
dominates), with a no-op ``debug_check`` on the input as mtajax's attacks and segmentation labels
carry. Prints, per layout, the number of argument arrays, the median seconds per call of each
variant over ``--repeats`` rounds of ``--calls`` calls (interleaved), and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx
from jax.experimental import checkify

from mtajax import dispatch
from mtajax import models


def _forward(predict):
  def fn(state, x):
    checkify.debug_check(jnp.all(jnp.isfinite(x)), "non-finite input")
    return predict(state, x)
  return fn


def _per_call(fn, state, x, calls: int) -> float:
  jax.block_until_ready(fn(state, x))
  start = time.perf_counter()
  for _ in range(calls):
    out = fn(state, x)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / calls


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--layouts", type=int, nargs="+", default=[0, 2])
  parser.add_argument("--calls", type=int, default=200)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  print(f"JAX {jax.__version__} on {jax.default_backend()}, {jax.device_count()} device(s)")
  print("layout  arrays  jax.jit ms/call  dispatch.jit ms/call  ratio")
  for layout in args.layouts:
    model = models.build_model("small", {"segment_semantic": 13, "normal": 3, "depth_zbuffer": 1},
                               layout, width=8, rngs=nnx.Rngs(0))
    predict, state = models.pure_predict(model)
    x = jnp.zeros((1, 8, 8, 3), jnp.float32)
    variants = {"jax.jit": jax.jit(_forward(predict)), "dispatch.jit": dispatch.jit(
        _forward(predict))}
    times = {name: [] for name in variants}
    for _ in range(args.repeats):
      for name, fn in variants.items():
        times[name].append(_per_call(fn, state, x, args.calls))
    slow, fast = (statistics.median(times[n]) for n in variants)
    print(f"{layout:6d}  {len(jax.tree.leaves(state)):6d}  {slow * 1e3:15.3f}  "
          f"{fast * 1e3:20.3f}  {slow / fast:5.1f}")


if __name__ == "__main__":
  main()
