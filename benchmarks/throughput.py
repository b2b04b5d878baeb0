"""Attack throughput (images × attack steps / s) per number of data-parallel devices.

    python benchmarks/throughput.py [--devices 1,2,4,8] [--per_device_batch 2] [--steps 5]

Each device count runs in its own subprocess; on CPU it forces that many host devices with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (on GPU/TPU it uses the first N real
devices). The attack is PGD-GB-MTA on the quickstart's small model at 32x32, the global batch is
``N × per_device_batch`` (weak scaling), the first (compiling) call is not timed. Prints one row
per device count and the throughput ratios to the 1-device run, all measured in this one run.
Forced CPU "devices" share the host's cores, so CPU ratios show the sharding overhead, not a
speed-up; real accelerators give the scaling.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def measure(num_devices: int, per_device_batch: int, steps: int, repeats: int,
            data_dir: str) -> dict:
  """Times the data-parallel attack on ``num_devices`` devices (run inside the subprocess)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from configs import quickstart  # pylint: disable=g-import-not-at-top
  from mtajax import attacks  # pylint: disable=g-import-not-at-top
  from mtajax import directions  # pylint: disable=g-import-not-at-top
  from mtajax import models  # pylint: disable=g-import-not-at-top
  from mtajax import parallel  # pylint: disable=g-import-not-at-top
  from mtajax.data import pipeline  # pylint: disable=g-import-not-at-top
  from mtajax.data import preprocess  # pylint: disable=g-import-not-at-top
  from mtajax.train import assemble  # pylint: disable=g-import-not-at-top

  t = quickstart.get_config("smoke").train
  batch_size = num_devices * per_device_batch
  loader = pipeline.dataset(t.dataset, data_dir, "train", batch_size=batch_size, tasks=t.tasks,
                            train=True, config=t.data_config)
  tasks = assemble.make_tasks(t)
  predict, state = models.pure_predict(assemble.make_model(t, tasks))
  mesh = parallel.make_mesh(num_devices)
  spec = attacks.Attack("pgd", directions.gbmta(), num_steps=steps)
  bounds = preprocess.input_bounds()
  attack = jax.jit(lambda s, b: spec(spec.loss_fn(functools.partial(predict, s), tasks),
                                     b["image"], b, eps=8.0, bounds=bounds))
  state, batch = parallel.replicate(state, mesh), parallel.shard_batch(loader.batch(0), mesh)
  jax.block_until_ready(attack(state, batch))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(attack(state, batch))
    times.append(time.perf_counter() - start)
  seconds = float(np.median(times))
  return {"devices": num_devices, "platform": jax.default_backend(), "global_batch": batch_size,
          "steps": steps, "seconds": seconds, "throughput": batch_size * steps / seconds}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--devices", default="1,2,4,8")
  parser.add_argument("--per_device_batch", type=int, default=2)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--data_dir", default=None, help="TFDS dir (default: a temporary one)")
  parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker is not None:
    import mtajax  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    print(json.dumps(measure(args.worker, args.per_device_batch, args.steps, args.repeats,
                             args.data_dir)))
    return
  counts = [int(n) for n in args.devices.split(",")]
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = args.data_dir or tmp
    rows = []
    for n in counts:
      flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}"
      env = {**os.environ, "XLA_FLAGS": flags.strip(),
             "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
      proc = subprocess.run([sys.executable, __file__, "--worker", str(n), "--data_dir", data_dir,
                             "--per_device_batch", str(args.per_device_batch),
                             "--steps", str(args.steps), "--repeats", str(args.repeats)],
                            env=env, cwd=ROOT, capture_output=True, text=True, check=False)
      if proc.returncode:
        raise SystemExit(f"{n} devices failed:\n{proc.stderr[-2000:]}")
      rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
  base = rows[0]["throughput"]
  print(f"{'devices':>7} {'platform':>8} {'batch':>5} {'s/attack':>9} {'img*steps/s':>11} "
        f"{'ratio':>6}")
  for r in rows:
    print(f"{r['devices']:>7} {r['platform']:>8} {r['global_batch']:>5} {r['seconds']:>9.3f} "
          f"{r['throughput']:>11.1f} {r['throughput'] / base:>6.2f}")


if __name__ == "__main__":
  main()
