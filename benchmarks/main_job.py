"""Wall time, phases and peak memory of the main job, on an empty and on a warm compile cache.

    python benchmarks/main_job.py [--config configs/quickstart.py] [--runs cold warm]
                                  [-- --config.KEY=VALUE ...]

Each run is ``python -m mtajax.run sweep`` in a fresh workdir (a new temporary directory, so the
embedded benchmark is generated and every model trained again) with ``MTAJAX_JAX_CACHE`` pointing
at a temporary compile cache: ``cold`` starts with it empty (a fresh clone), ``warm`` reuses what the
cold run wrote (a second run, or ``MTAJAX_JAX_CACHE`` on a shared disk). It prints the job's own
phase summary (wall and JAX compile seconds for data, training, attacks, robust evaluation, report;
``startup`` = Python and JAX imports, the rest of the wall time), the wall time and the peak
resident memory of the job's process (``os.wait4``'s ``ru_maxrss``), its CPU seconds (user +
system) and the share of the machine's CPU time the hypervisor stole during the run (/proc/stat
``steal``): on a shared virtual machine wall times compare only at similar steal.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
_PHASE = re.compile(r"^(\w+)\s+([\d.]+)\s+([\d.]+)$")


def cpu_times() -> list[int]:
  """The machine's CPU time counters (user, nice, system, idle, iowait, irq, softirq, steal, ...)
  from /proc/stat (Linux; [] elsewhere)."""
  try:
    with open("/proc/stat") as f:
      return [int(v) for v in f.readline().split()[1:]]
  except OSError:
    return []


def steal_share(before: list[int], after: list[int]) -> float:
  """The share of the machine's CPU time the hypervisor took (``steal``) between two readings: a
  virtual machine's measurements are comparable only at similar steal."""
  if len(before) < 8 or len(after) < 8:
    return float("nan")
  delta = [b - a for a, b in zip(before, after)]
  return delta[7] / max(sum(delta[:8]), 1)


def run_job(config: str, workdir: pathlib.Path, cache: pathlib.Path,
            overrides: list[str]) -> dict[str, object]:
  """Runs the main job once; returns its phases, wall seconds, peak RSS (bytes) and log path."""
  log = workdir / "job.log"
  cmd = [sys.executable, "-m", "mtajax.run", "sweep", f"--config={config}",
         f"--config.workdir={workdir / 'run'}", f"--config.train.data_dir={workdir / 'tfds'}",
         *overrides]
  env = {**os.environ, "MTAJAX_JAX_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
  start, times = time.perf_counter(), cpu_times()
  with open(log, "w") as out:
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
  wall, steal = time.perf_counter() - start, steal_share(times, cpu_times())
  if os.waitstatus_to_exitcode(status) != 0:
    raise SystemExit(f"the main job failed (status {os.waitstatus_to_exitcode(status)}); see {log}")
  phases = {}
  for line in log.read_text().splitlines():
    m = _PHASE.match(line.strip())
    if m and m.group(1) != "total":
      phases[m.group(1)] = (float(m.group(2)), float(m.group(3)))
  phases["startup"] = (wall - sum(w for w, _ in phases.values()), 0.0)
  return {"phases": phases, "wall": wall, "rss": usage.ru_maxrss * 1024, "log": log,
          "steal": steal, "cpu": usage.ru_utime + usage.ru_stime}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/quickstart.py")
  parser.add_argument("--runs", nargs="+", default=["cold", "warm"], choices=["cold", "warm"])
  parser.add_argument("--keep", action="store_true", help="keep the temporary directories")
  parser.add_argument("overrides", nargs="*", help="--config.KEY=VALUE overrides (after --)")
  args = parser.parse_args()
  base = pathlib.Path(tempfile.mkdtemp(prefix="mtajax_main_job_"))
  cache = base / "jax_cache"
  results = {}
  for name in args.runs:
    workdir = base / name
    workdir.mkdir()
    print(f"{name} compile cache: running {args.config} in {workdir} ...", flush=True)
    results[name] = run_job(args.config, workdir, cache, args.overrides)
  with open("/proc/loadavg") as f:
    load = f.read().split()[:3]
  print(f"\nmachine: {os.cpu_count()} CPUs, load average {' '.join(load)} (1/5/15 min) at the end")
  names = list(results)
  print(f"{'phase':<10}" + "".join(f" {n + ' wall s':>12} {'(compile)':>10}" for n in names))
  phases = list(dict.fromkeys(p for r in results.values() for p in r["phases"]))
  for p in phases:
    cells = "".join(f" {results[n]['phases'].get(p, (0, 0))[0]:12.1f} "
                    f"{results[n]['phases'].get(p, (0, 0))[1]:10.1f}" for n in names)
    print(f"{p:<10}{cells}")
  print(f"{'wall':<10}" + "".join(f" {results[n]['wall']:12.1f} {'':>10}" for n in names))
  print(f"{'peak GB':<10}" + "".join(f" {results[n]['rss'] / 1e9:12.2f} {'':>10}" for n in names))
  print(f"{'cpu s':<10}" + "".join(f" {results[n]['cpu']:12.1f} {'':>10}" for n in names))
  print(f"{'steal %':<10}" + "".join(f" {100 * results[n]['steal']:12.1f} {'':>10}" for n in names))
  if args.keep:
    print(f"kept {base}")
  else:
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
  main()
