"""Multi-host: a 2-process ``jax.distributed`` sweep on localhost equals the 1-process sweep.

Each process runs ``python -m mtajax.run`` under an audit hook that logs the files it opens for
writing (or renames) inside the workdir, so the test can check that only process 0 wrote.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
ARGS = ["--config", f"{ROOT}/configs/quickstart.py:smoke", "--config.layouts=(0,)",
        "--config.attacks=('fgsm',)", "--config.directions=('total',)", "--config.eps=(8.0,)",
        "--config.train.num_steps=2", "--config.train.eval_every=2",
        "--config.train.checkpoint_every=2", "--config.train.progress_bar=False",
        "--config.robust.enabled=False"]  # 2-step models: clean metrics can be 0 (no robust ARP).
# Runs mtajax.run, logging write-mode opens and renames under the workdir to WRITE_LOG.
HOOKED = """
import json, os, runpy, sys
workdir, log, writes = os.path.abspath(os.environ["WORKDIR"]), os.environ["WRITE_LOG"], []
def hook(event, args):
  if event == "open" and isinstance(args[0], str) and (
      any(c in str(args[1]) for c in "wax+") or (isinstance(args[2], int) and args[2] & 3)):
    path = os.path.abspath(args[0])
  elif event in ("os.rename", "os.replace", "os.mkdir"):
    path = os.path.abspath(os.fsdecode(args[0]))
  else:
    return
  if path.startswith(workdir):
    writes.append(path)
sys.addaudithook(hook)
try:
  runpy.run_module("mtajax.run", run_name="__main__")
finally:
  with open(log, "w") as f:
    json.dump(writes, f)
"""

PREPARE = ("from configs import quickstart; from mtajax.data import pipeline; "
           "t = quickstart.get_config('smoke').train; "
           "pipeline.prepare(t.dataset, t.data_dir, config=t.data_config)")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(tmp: pathlib.Path, workdir: str, name: str, extra=()) -> subprocess.Popen:
  env = {**os.environ, "MTAJAX_JAX_CACHE": str(ROOT / ".jax_cache"), "PYTHONPATH": str(ROOT),
         "WORKDIR": str(tmp / workdir), "WRITE_LOG": str(tmp / f"{name}.writes.json")}
  return subprocess.Popen([sys.executable, "-c", HOOKED, "sweep", *ARGS,
                           f"--config.workdir={workdir}", *extra], cwd=tmp, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen) -> None:
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out[-3000:]


def _records(workdir: pathlib.Path) -> dict[str, dict]:
  records = [json.loads(line) for line in (workdir / "results.jsonl").read_text().splitlines()]
  return {r["key"]: r for r in records}


def _distributed(tmp: pathlib.Path, workdir: str, tag: str, *also: subprocess.Popen) -> None:
  port = _free_port()
  procs = [*also] + [_start(tmp, workdir, f"{tag}{i}", [
      "--config.distributed.enabled=True",
      f"--config.distributed.coordinator_address=localhost:{port}",
      "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}"])
           for i in range(2)]
  for proc in procs:
    _finish(proc)


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> pathlib.Path:
  tmp = tmp_path_factory.mktemp("distributed")
  subprocess.run([sys.executable, "-c", PREPARE], cwd=tmp, check=True, capture_output=True,
                 env={**os.environ, "PYTHONPATH": str(ROOT)})  # The dataset, for all three.
  _distributed(tmp, "multi", "first", _start(tmp, "single", "single"))
  _distributed(tmp, "multi", "resumed")
  return tmp


def test_two_process_sweep_records_equal_single_process(sweeps):
  single, multi = _records(sweeps / "single"), _records(sweeps / "multi")
  assert len(single) == 2 and set(multi) == set(single)  # clean + fgsm/total, same keys
  for key, want in single.items():
    got = multi[key]
    assert (got["devices"], got["global_batch"], got["per_device_batch"]) == (2, 8, 4)
    assert (want["devices"], want["per_device_batch"]) == (1, 8)
    for task, metrics in want["metrics"].items():
      for name, value in metrics.items():
        assert got["metrics"][task][name] == pytest.approx(value, rel=1e-4, abs=1e-5), (task, name)
    assert got["losses"] == pytest.approx(want["losses"], rel=1e-5)


def test_only_process_0_wrote_files(sweeps):
  writes = {name: json.loads((sweeps / f"{name}.writes.json").read_text())
            for name in ("first0", "first1", "resumed0", "resumed1")}
  # Process 1 opens no file for writing; Orbax gives each process an array-metadata folder.
  assert all("orbax-checkpoint-tmp" in p for p in writes["first1"]), writes["first1"]
  assert writes["resumed1"] == []
  assert any("results.jsonl" in p for p in writes["first0"])  # Atomic: a temp file, renamed.
  assert any("report.md" in p for p in writes["first0"])
  lines = (sweeps / "multi" / "models" / "synthetic-small-L0" / "metrics.jsonl").read_text()
  assert len(lines.splitlines()) == 3  # 2 train steps + 1 evaluation, logged once


def test_resumed_two_process_sweep_skips_everything(sweeps):
  wrote = json.loads((sweeps / "resumed0.writes.json").read_text())
  assert not any("results.jsonl" in p or "checkpoints" in p for p in wrote)
  assert len(_records(sweeps / "multi")) == 2


# One process of a ragged evaluation: 15 test images in global batches of 6 (the last one 3 real
# + 3 padding) over NUM processes, clean and GB-MTA-PGD; process 0 prints the results as JSON.
RAGGED = """
import json, sys
import jax
pid, num, port, data_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
if num > 1:
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(f"localhost:{port}", num_processes=num, process_id=pid)
from configs import quickstart
from mtajax import directions, evaluate, models, parallel
from mtajax.data import pipeline, preprocess
from mtajax.train import assemble
t = quickstart.get_config("smoke").train
builder = pipeline.prepare(t.dataset, data_dir, config=t.data_config)
source = builder.as_data_source(split="test")
loader = pipeline.Loader(t.dataset, [source[i] for i in range(15)], batch_size=6, tasks=t.tasks,
                         train=False, seed=0, options=pipeline.Options(), shuffle=False,
                         drop_remainder=False, process_index=pid, process_count=num,
                         class_weights=None, pad=True)
tasks = assemble.make_tasks(t)
predict, state = models.pure_predict(assemble.make_model(t, tasks))
mesh = parallel.make_mesh()
spec = evaluate.AttackSpec("pgd", directions.gbmta(), num_steps=2, options=(("unroll", 1),))
clean = evaluate.evaluate(predict, state, loader, tasks, mesh=mesh)
attacked = evaluate.evaluate(predict, state, loader, tasks, spec=spec, eps=8.0,
                             bounds=preprocess.input_bounds(), baselines=clean.losses, mesh=mesh)
if pid == 0:
  print(json.dumps({"shapes": sorted({loader.batch(s)["image"].shape[0] for s in range(3)}),
                    "compiles": evaluate._compiled._cache_size(), "devices": mesh.size,
                    "clean": [clean.metrics, clean.losses],
                    "attacked": [attacked.metrics, attacked.losses]}))
"""


def _ragged(data_dir: pathlib.Path, num: int) -> dict:
  port = str(_free_port())
  env = {**os.environ, "PYTHONPATH": str(ROOT), "MTAJAX_JAX_CACHE": str(ROOT / ".jax_cache")}
  procs = [subprocess.Popen([sys.executable, "-c", RAGGED, str(i), str(num), port, str(data_dir)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True) for i in range(num)]
  outs = []
  for proc in procs:
    try:
      out, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:  # Unequal local shapes used to hang in shard_batch.
      for p in procs:
        p.kill()
      raise
    assert proc.returncode == 0, out[-3000:]
    outs.append(out)
  return json.loads(outs[0].strip().splitlines()[-1])


def test_two_process_ragged_evaluation_equals_one_process(tmp_path):
  one = _ragged(tmp_path, 1)  # prepares the dataset for both runs
  two = _ragged(tmp_path, 2)
  assert (one["devices"], two["devices"]) == (1, 2)
  for run in (one, two):
    assert run["shapes"] == [6 // run["devices"]]  # one local shape at every step
    assert run["compiles"] == 2  # clean and attacked: the padded last batch compiles nothing new
  for key in ("clean", "attacked"):
    (want, want_losses), (got, got_losses) = one[key], two[key]
    for task, metrics in want.items():
      for name, value in metrics.items():
        assert got[task][name] == pytest.approx(value, rel=1e-4, abs=1e-5), (key, task, name)
    assert got_losses == pytest.approx(want_losses, rel=1e-5)
