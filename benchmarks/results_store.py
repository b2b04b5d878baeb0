"""Write cost of ``mtajax.results.Store.add`` against a plain fsync'ed append, per record.

    python benchmarks/results_store.py [--records 1000,3000,6500] [--repeats 3]

For each record count n it writes n records of the sweep's size (~1.2 kB of JSON each) into a
fresh file three ways, round-robin, and prints the median seconds per record and the ratio to the
plain append measured in the same run: ``plain`` (open, one write, fsync, close per record: the
floor for a durable record), ``store`` (``Store.add``: lock, re-read the tail, append, fsync) and
``rewrite`` (the former store, which rewrote the whole file atomically per record; quadratic, so it
only runs up to 3,000 records). A constant ``store`` ratio over n is the O(total) property.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import tempfile
import time

from mtajax import results


def _record(i: int) -> dict:
  metrics = {t: {f"metric_{m}": 0.123456789 * m for m in range(6)} for t in ("seg", "norm", "dep")}
  return {"key": f"{i:016x}", "model": "nyuv2-resnet34-L41", "attack": "apgd",
          "direction": "gbmta", "eps": 8.0, "metrics": metrics, "losses": {"seg": 1.0},
          "arp_per_task": {"seg": 12.3, "norm": 4.5, "dep": 6.7}, "note": None, "pad": "x" * 600}


def plain(path: pathlib.Path, records: list[dict]) -> None:
  for r in records:
    with open(path, "ab") as f:
      f.write((json.dumps(r, sort_keys=True) + "\n").encode())
      f.flush()
      os.fsync(f.fileno())


def store(path: pathlib.Path, records: list[dict]) -> None:
  s = results.Store(path)
  for r in records:
    s.add(r)


def rewrite(path: pathlib.Path, records: list[dict]) -> None:
  done = []
  for r in records:
    done.append(json.dumps(r, sort_keys=True))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
      f.write("\n".join(done) + "\n")
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--records", default="1000,3000,6500")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  print(f"{'records':>8} {'variant':>8} {'ms/record':>10} {'÷ plain':>8}")
  for n in (int(x) for x in args.records.split(",")):
    records = [_record(i) for i in range(n)]
    variants = {"plain": plain, "store": store}
    if n <= 3000:
      variants["rewrite"] = rewrite
    times = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
      for rep in range(args.repeats):
        for name, fn in variants.items():
          path = pathlib.Path(tmp) / f"{name}{rep}.jsonl"
          start = time.perf_counter()
          fn(path, records)
          times[name].append(time.perf_counter() - start)
          path.unlink()
    base = statistics.median(times["plain"])
    for name, ts in times.items():
      t = statistics.median(ts)
      print(f"{n:>8} {name:>8} {1e3 * t / n:>10.3f} {t / base:>8.2f}")


if __name__ == "__main__":
  main()
