"""Two runs on one workdir: one trains a model (or builds a dataset), the other waits and reuses it."""

import errno
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import tensorflow_datasets as tfds

from mtajax import locks
from mtajax.data import pipeline

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Holds the lock on argv[1], prints 'held' and keeps it until its stdin is closed (or it is killed).
HOLDER = """
import sys
from mtajax import locks
with locks.exclusive(sys.argv[1], "holder waits"):
  print("held", flush=True)
  sys.stdin.read()
"""
# Takes the lock on argv[1] and prints 'took'.
TAKER = """
import sys
from mtajax import locks
with locks.exclusive(sys.argv[1], "taker waits"):
  print("took", flush=True)
"""


def _python(code: str, *args) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], text=True,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def _holder(path: pathlib.Path) -> subprocess.Popen:
  holder = _python(HOLDER, path)
  assert holder.stdout.readline() == "held\n"
  return holder


def test_a_second_process_waits_until_the_holder_releases(tmp_path):
  path = tmp_path / "sub" / "x.lock"
  holder = _holder(path)
  taker = _python(TAKER, path)
  assert taker.stdout.readline() == "taker waits\n"  # Said once, then blocked:
  time.sleep(0.5)
  assert taker.poll() is None
  holder.stdin.close()
  assert holder.wait(timeout=60) == 0
  assert taker.communicate(timeout=60)[0] == "took\n" and taker.returncode == 0


def test_a_killed_holder_frees_the_lock(tmp_path):
  path = tmp_path / "x.lock"
  holder = _holder(path)
  holder.send_signal(signal.SIGKILL)
  holder.wait(timeout=60)
  assert _python(TAKER, path).communicate(timeout=60)[0] == "took\n"  # No waiting.
  assert path.exists()  # The lock file stays; it holds no state.


def test_the_lock_is_reentrant_in_one_process(tmp_path):
  path = tmp_path / "x.lock"
  with locks.exclusive(path, "never printed"):
    with locks.exclusive(path, "never printed"):  # flock on a second descriptor would deadlock.
      pass
    taker = _python(TAKER, path)
    assert taker.stdout.readline() == "taker waits\n"  # Still held by the outer block.
  assert taker.communicate(timeout=60)[0] == "took\n"


def test_a_read_only_folder_needs_no_lock(tmp_path, monkeypatch):
  def read_only(*_):
    raise OSError(errno.EROFS, "Read-only file system")
  monkeypatch.setattr(os, "open", read_only)
  with locks.exclusive(tmp_path / "x.lock", "never printed"):  # Reads only finished data.
    pass


# Process argv[1] of a 2-process jax.distributed run (port argv[2]) in the lock of model argv[3].
DISTRIBUTED = """
import sys
import jax
pid, port, model_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=pid)
from mtajax import locks
with locks.model(model_dir):
  with locks.model(model_dir):  # Nested (ensure_trained around loop.train): no barrier.
    print(f"inside {pid}", flush=True)
"""


def test_a_multi_host_run_waits_for_the_lock_without_deadlock(tmp_path):
  model_dir = tmp_path / "models" / "m"
  holder = _holder(locks.lock_file(model_dir))  # Another run, training m.
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  procs = [_python(DISTRIBUTED, i, port, model_dir) for i in range(2)]
  assert procs[0].stdout.readline() == "waiting for another run training m\n"
  time.sleep(1.0)
  assert [p.poll() for p in procs] == [None, None]  # Process 1 waits at the barrier.
  holder.stdin.close()
  outs = [p.communicate(timeout=120)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs
  assert [out.splitlines()[-1] for out in outs] == ["inside 0", "inside 1"]  # Gloo logs first.


# Prepares a 2 + 1 scene embedded dataset in argv[1] and prints its number of train examples.
PREPARE = """
import sys
from mtajax.data import pipeline
builder = pipeline.prepare("synthetic", sys.argv[1], config=dict(resolution=8, num_train=2,
                                                                  num_test=1))
print(builder.info.splits["train"].num_examples, flush=True)
"""


def test_a_second_run_waits_for_the_dataset_and_reuses_it(tmp_path):
  builder = pipeline._builder("synthetic", tmp_path, dict(resolution=8, num_train=2, num_test=1))  # pylint: disable=protected-access
  holder = _holder(locks.lock_file(builder.data_dir))  # The first run, building.
  second = _python(PREPARE, tmp_path)
  assert second.stdout.readline() == ("waiting for another run building "
                                      f"{builder.info.full_name} in {tmp_path}\n")
  tfds.core.GeneratorBasedBuilder.download_and_prepare(builder)  # What the first run builds.
  holder.stdin.close()
  assert second.communicate(timeout=60)[0] == "2\n" and second.returncode == 0
  assert sorted(p.name for p in pathlib.Path(builder.data_dir).parent.iterdir()) == [
      "1.0.0", "1.0.0.lock"]  # Built once: no second build, renamed or left incomplete.


# One tiny model (4 steps, a checkpoint every 2) on a dataset the two runs find unbuilt: one builds
# and trains, the other waits for each, then both attack it (FGSM, one direction, one ε).
ARGS = ["sweep", "--config", f"{ROOT}/configs/quickstart.py:smoke", "--config.layouts=(0,)",
        "--config.attacks=('fgsm',)", "--config.directions=('total',)", "--config.eps=(8.0,)",
        "--config.examples_eps=(8.0,)", "--config.train.num_steps=4",
        "--config.train.eval_every=4", "--config.train.checkpoint_every=2",
        "--config.train.keep_checkpoints=3", "--config.train.progress_bar=False",
        "--config.robust.enabled=False", "--config.workdir=work", "--config.train.data_dir=tfds"]
MODEL = "synthetic-small-L0"


def test_two_sweeps_on_one_fresh_workdir_train_and_build_once(tmp_path):
  env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
         "MTAJAX_JAX_CACHE": str(ROOT / ".jax_cache")}
  procs = [subprocess.Popen([sys.executable, "-m", "mtajax.run", *ARGS], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for _ in range(2)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  for proc, out in zip(procs, outs):
    assert proc.returncode == 0, out[-3000:]
  trained = [out for out in outs if re.search(rf"^training {MODEL} \(4 steps\)", out, re.M)]
  assert len(trained) == 1, outs  # The other run reused the model, not retrained it.
  waited = outs[1 - outs.index(trained[0])]
  assert f"waiting for another run training {MODEL}\n" in waited, waited
  assert waited.count("waiting for another run training") == 1
  assert sum(out.count("waiting for another run building") for out in outs) <= 1
  built = tmp_path / "tfds" / "mtajax_synthetic" / "r32_n64-16_s0"
  assert sorted(p.name for p in built.iterdir()) == ["1.0.0", "1.0.0.lock"]  # Built once.

  model = tmp_path / "work" / "models" / MODEL
  steps = sorted(int(p.name) for p in (model / "checkpoints").iterdir() if p.name.isdigit())
  assert steps == [2, 4]  # One history: no half-written or repeated step.
  log = [json.loads(line) for line in (model / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in log if r["split"] == "train"] == [1, 2, 3, 4]
  keys = [json.loads(line)["key"]
          for line in (tmp_path / "work" / "results.jsonl").read_text().splitlines()]
  assert len(keys) == 2 and len(set(keys)) == 2  # clean + fgsm/total, each once
  assert not list(tmp_path.glob("work/**/*tmp*"))
