"""Compiled-code memory of one process compiling many programs, with and without release.

    python benchmarks/compile_memory.py [--programs 300] [--steps 20]

Compiles ``--programs`` distinct programs (a ``--steps``-step unrolled loop, one per "model",
through one module-level ``jax.jit`` with a static function argument, as `mtajax.evaluate` does)
first keeping them, then calling `mtajax.memory.release_compiled` after each. Prints the memory
mappings and resident memory per program, and how many programs the kept mode could compile before
reaching ``vm.max_map_count`` (where XLA:CPU's JIT fails with ``LLVM ERROR: Unable to allocate
section memory``). Linux only (/proc). Each mode runs in its own subprocess.
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys


def _status() -> tuple[int, float]:
  with open("/proc/self/maps") as f:
    maps = sum(1 for _ in f)
  with open("/proc/self/status") as f:
    rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
  return maps, rss / 1024


def measure(programs: int, steps: int, release: bool) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from mtajax import memory  # pylint: disable=g-import-not-at-top

  @functools.partial(jax.jit, static_argnames="fn")
  def step(x, *, fn):
    for k in range(steps):
      x = jnp.tanh(fn(x) * (k + 1.0))
    return x

  step(jnp.ones((8, 8)), fn=jnp.sin).block_until_ready()  # JAX's own start-up mappings.
  memory.release_compiled(max_mappings=0)
  maps0, rss0 = _status()
  for i in range(programs):
    step(jnp.ones((8, 8)), fn=lambda x, i=i: jnp.sin(x @ x.T) * i).block_until_ready()
    if release:
      memory.release_compiled(max_mappings=0)
  maps, rss = _status()
  return {"maps_per_program": (maps - maps0) / programs, "mb_per_program": (rss - rss0) / programs,
          "maps": maps}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--programs", type=int, default=300)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--child", choices=("keep", "release"))
  args = parser.parse_args()
  if args.child:
    print(json.dumps(measure(args.programs, args.steps, args.child == "release")))
    return
  with open("/proc/sys/vm/max_map_count") as f:
    limit = int(f.read())
  for mode in ("keep", "release"):
    out = subprocess.run([sys.executable, __file__, "--child", mode, "--programs",
                          str(args.programs), "--steps", str(args.steps)],
                         capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.splitlines()[-1])
    room = ("unbounded" if r["maps_per_program"] < 1 else
            f"{int((limit - r['maps']) / r['maps_per_program']) + args.programs} programs")
    print(f"{mode:>8}: {r['maps_per_program']:6.1f} mappings and {r['mb_per_program']:5.2f} MB "
          f"per program; vm.max_map_count {limit} reached after ~{room}")


if __name__ == "__main__":
  main()
