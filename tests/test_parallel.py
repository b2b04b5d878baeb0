"""Data parallelism: 8 forced CPU devices equal 1 device (attack, metrics, train step), and a
2-process ``jax.distributed`` run equals the 1-process run.

JAX fixes its device count when it starts, so the 8-device run happens in a subprocess that runs
this file as a script (``XLA_FLAGS=--xla_force_host_platform_device_count=8``); it prints the
comparisons as JSON and the test checks them. The main pytest process keeps its single device.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEVICES = 8


def _max_rel(a, b) -> float:
  """Max |a - b| / (1 + |b|) over the leaves of two pytrees of equal structure."""
  import jax  # pylint: disable=g-import-not-at-top
  diffs = jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - y)
                                                 / (1 + np.abs(np.asarray(y, np.float64))))),
                       a, b)
  return max(jax.tree.leaves(diffs))


def _worker(data_dir: str) -> dict:
  """Runs the 8-device vs 1-device comparisons (in the subprocess) and returns the numbers."""
  import functools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from configs import quickstart  # pylint: disable=g-import-not-at-top
  from mtajax import attacks  # pylint: disable=g-import-not-at-top
  from mtajax import directions  # pylint: disable=g-import-not-at-top
  from mtajax import evaluate as evaluate_lib  # pylint: disable=g-import-not-at-top
  from mtajax import models  # pylint: disable=g-import-not-at-top
  from mtajax import parallel  # pylint: disable=g-import-not-at-top
  from mtajax import tasks as tasks_lib  # pylint: disable=g-import-not-at-top
  from mtajax.data import pipeline  # pylint: disable=g-import-not-at-top
  from mtajax.data import preprocess  # pylint: disable=g-import-not-at-top
  from mtajax.train import assemble  # pylint: disable=g-import-not-at-top
  from mtajax.train import optim  # pylint: disable=g-import-not-at-top
  from mtajax.train import step as step_lib  # pylint: disable=g-import-not-at-top

  assert jax.device_count() == DEVICES, jax.devices()
  t = quickstart.get_config("smoke").train
  t.data_dir = data_dir
  loader = pipeline.dataset(t.dataset, data_dir, "test", batch_size=16, tasks=t.tasks,
                            config=t.data_config)
  batches = [loader.batch(0)]
  tasks = assemble.make_tasks(t)
  model = assemble.make_model(t, tasks)
  predict, state = models.pure_predict(model)
  mesh8, mesh1 = parallel.make_mesh(), parallel.make_mesh(1)
  out = {"mesh_sizes": [mesh8.size, mesh1.size]}

  # 1. The attack of one batch: 8 shards vs 1 device, the attack function untouched.
  spec = attacks.Attack("pgd", directions.gbmta(), num_steps=2, options=(("unroll", 1),))
  bounds = preprocess.input_bounds()
  attack = jax.jit(lambda s, b: spec(tasks_lib.make_loss_fn(
      functools.partial(predict, s), tasks, "image"), b["image"], b, eps=8.0, bounds=bounds).x_adv)
  x1 = attack(*parallel.replicate((state, batches[0]), mesh1))
  x8 = attack(parallel.replicate(state, mesh8), parallel.shard_batch(batches[0], mesh8))
  out["attack_shards"] = len(x8.sharding.device_set)
  out["attack_per_shard"] = x8.addressable_shards[0].data.shape[0]
  out["attack_max_abs"] = float(np.max(np.abs(np.asarray(x8) - np.asarray(x1))))

  # 2. Evaluation: metric sums accumulated over 8 shards (two batches) vs 1 device.
  batches.append(loader.batch(0))
  ev1 = evaluate_lib.evaluate(predict, state, batches, tasks)
  ev8 = evaluate_lib.evaluate(predict, state, batches, tasks, mesh=mesh8)
  out["eval_rel"] = _max_rel((ev8.metrics, ev8.losses), (ev1.metrics, ev1.losses))
  out["eval_metrics"] = ev1.metrics

  # 3. A train step (BatchNorm in train mode, Adam) on the same global batch.
  train_loader = pipeline.dataset(t.dataset, data_dir, "train", batch_size=16, tasks=t.tasks,
                                  train=True, config=t.data_config)
  batch = train_loader.batch(0)
  apply, params, batch_stats = models.pure_apply(model)
  optimizer = optim.make_optimizer(t)
  train_step = step_lib.make_train_step(apply, tasks, optimizer, t)
  init = step_lib.init_state(nnx.to_pure_dict(params), nnx.to_pure_dict(batch_stats),
                             optimizer, t.seed)
  s1, m1 = train_step(init, batch)
  s8, m8 = train_step(parallel.replicate(init, mesh8), parallel.shard_batch(batch, mesh8))
  out["train_rel"] = _max_rel((s8["params"], s8["batch_stats"], m8),
                              (s1["params"], s1["batch_stats"], m1))
  out["train_changed"] = _max_rel(s1["params"], init["params"])
  return out


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory) -> dict:
  env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
         "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} "
                      f"--xla_force_host_platform_device_count={DEVICES}"}
  data_dir = tmp_path_factory.mktemp("tfds")
  proc = subprocess.run([sys.executable, __file__, str(data_dir)], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_meshes_span_8_and_1_devices(eight_devices):
  assert eight_devices["mesh_sizes"] == [DEVICES, 1]


def test_8_device_attack_equals_1_device_attack(eight_devices):
  assert eight_devices["attack_shards"] == DEVICES
  assert eight_devices["attack_per_shard"] == 16 // DEVICES
  assert eight_devices["attack_max_abs"] < 1e-3  # input units: 0-255 scale, ε = 8


def test_metrics_over_8_shards_equal_1_device(eight_devices):
  # float32 sums over ~16k pixels in another order: ~1e-5 (2.4e-5 at XLA:CPU optimisation level 0);
  # a lost or doubled shard or a counted padding row would be >= 1e-2.
  assert eight_devices["eval_rel"] < 1e-4
  metrics = eight_devices["eval_metrics"]
  assert metrics["segment_semantic"]["Pixel Acc"] > 0  # Not a vacuous all-zero comparison.


def test_8_device_train_step_equals_1_device(eight_devices):
  assert eight_devices["train_changed"] > 1e-4  # The step did update the parameters.
  assert eight_devices["train_rel"] < 1e-4


def test_make_mesh_rejects_bad_device_counts():
  from mtajax import parallel  # pylint: disable=g-import-not-at-top
  for n in (0, 2):
    with pytest.raises(ValueError, match="config.mesh"):
      parallel.make_mesh(n)


def test_metric_sums_of_shards_merge_to_the_whole_batch():
  """Per-shard metric states merged (sums) give the whole-batch metrics ('standard' definition)."""
  import jax  # pylint: disable=g-import-not-at-top
  from mtajax.tasks import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  from mtajax.tasks import task_sets  # pylint: disable=g-import-not-at-top
  tasks = task_sets.synthetic_tasks(3, num_classes=5, definition="standard")
  rng = np.random.default_rng(0)
  batch = {"segment_semantic": rng.integers(0, 5, (8, 4, 4)).astype(np.int32),
           "normal": rng.normal(size=(8, 4, 4, 3)).astype(np.float32),
           "depth_zbuffer": rng.uniform(0.5, 2, (8, 4, 4)).astype(np.float32)}
  preds = {"segment_semantic": rng.normal(size=(8, 4, 4, 5)).astype(np.float32),
           "normal": rng.normal(size=(8, 4, 4, 3)).astype(np.float32),
           "depth_zbuffer": rng.uniform(0.5, 2, (8, 4, 4, 1)).astype(np.float32)}
  whole = metrics_lib.update(tasks, metrics_lib.init(tasks), preds, batch)
  merged = metrics_lib.init(tasks)
  for i in range(DEVICES):
    shard = lambda d: {k: v[i:i + 1] for k, v in d.items()}  # pylint: disable=unnecessary-lambda-assignment
    merged = metrics_lib.merge(merged, metrics_lib.update(tasks, metrics_lib.init(tasks),
                                                          shard(preds), shard(batch)))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), merged, whole)
  # Independent check of one statistic: the pixel accuracy counted in NumPy.
  acc = np.mean(np.argmax(preds["segment_semantic"], -1) == batch["segment_semantic"])
  got = metrics_lib.compute(tasks, merged)["segment_semantic"]["Pixel Acc"]
  assert got == pytest.approx(acc, rel=1e-5)


if __name__ == "__main__":
  import mtajax  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_compilation_cache_dir", str(ROOT / ".jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  print(json.dumps(_worker(sys.argv[1])))


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
  """The smoke config's untrained model and 3 real test examples, unpadded and padded to 4."""
  import jax  # pylint: disable=g-import-not-at-top
  from configs import quickstart  # pylint: disable=g-import-not-at-top
  from mtajax import models  # pylint: disable=g-import-not-at-top
  from mtajax.data import pipeline  # pylint: disable=g-import-not-at-top
  from mtajax.train import assemble  # pylint: disable=g-import-not-at-top
  t = quickstart.get_config("smoke").train
  loader = pipeline.dataset(t.dataset, tmp_path_factory.mktemp("tfds"), "test", batch_size=4,
                            tasks=t.tasks, config=t.data_config, pad=False)
  real = {k: v[:3] for k, v in loader.batch(0).items()}
  padded = {k: np.concatenate([v, loader.blank()[k][None]]) for k, v in real.items()}
  padded["example_weight"] = np.array([1, 1, 1, 0], np.float32)
  tasks = assemble.make_tasks(t)
  predict, state = models.pure_predict(assemble.make_model(t, tasks))
  return jax.device_put((real, padded)), tasks, predict, state


@pytest.mark.parametrize("direction", ["total", "gbmta"])
def test_padded_batch_attacks_its_real_examples_like_the_unpadded_batch(small_model, direction):
  import functools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from mtajax import attacks  # pylint: disable=g-import-not-at-top
  from mtajax import directions  # pylint: disable=g-import-not-at-top
  from mtajax import evaluate as evaluate_lib  # pylint: disable=g-import-not-at-top
  from mtajax import tasks as tasks_lib  # pylint: disable=g-import-not-at-top
  from mtajax.data import preprocess  # pylint: disable=g-import-not-at-top
  (real, padded), tasks, predict, state = small_model
  spec = attacks.Attack("pgd", directions.by_name(direction), num_steps=3,
                        options=(("unroll", 1),))
  bounds = preprocess.input_bounds()
  attack = jax.jit(lambda b: spec(spec.loss_fn(functools.partial(predict, state), tasks),
                                  b["image"], b, eps=8.0, bounds=bounds).x_adv)
  x_real, x_pad = np.asarray(attack(real)), np.asarray(attack(padded))
  assert np.abs(x_real - real["image"]).max() > 1  # the attack moved the real images
  np.testing.assert_array_equal(x_pad[:3], x_real)  # bit-identical real examples
  np.testing.assert_array_equal(x_pad[3], padded["image"][3])  # padding has no gradient
  evaluations = [evaluate_lib.evaluate(predict, state, [b], tasks, spec=spec, eps=8.0,
                                       bounds=bounds) for b in (real, padded)]
  assert _max_rel(evaluations[1].metrics, evaluations[0].metrics) < 1e-5  # float32 sum order
  assert evaluations[1].losses == pytest.approx(evaluations[0].losses, rel=1e-6)


def test_padded_clean_evaluation_equals_the_unpadded_one(small_model):
  from mtajax import evaluate as evaluate_lib  # pylint: disable=g-import-not-at-top
  (real, padded), tasks, predict, state = small_model
  want = evaluate_lib.evaluate(predict, state, [real, real], tasks)
  got = evaluate_lib.evaluate(predict, state, [real, padded], tasks)
  assert _max_rel(got.metrics, want.metrics) < 1e-5
  assert got.losses == pytest.approx(want.losses, rel=1e-6)
  assert got.metrics["depth_zbuffer"]["abs_err"] > 0 and got.losses["normal"] > 0


def test_replicate_relabels_one_device_arrays_so_a_step_compiles_once():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from mtajax import parallel  # pylint: disable=g-import-not-at-top
  mesh = parallel.make_mesh(1)
  replicated = parallel.replicate({"w": jnp.ones(3)}, mesh)  # a fresh array: SingleDeviceSharding
  assert replicated["w"].sharding == jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  step = jax.jit(lambda s: {"w": s["w"] + 1.0})
  step(step(replicated))  # the outputs carry the NamedSharding: an unlabelled input compiled twice
  assert step._cache_size() == 1  # pylint: disable=protected-access


# Multi-host: a 2-process ``jax.distributed`` sweep on localhost equals the 1-process sweep, and a
# ragged evaluation over 2 processes equals it over 1 process; both in the same launches.
#
# Each process runs ``python -m mtajax.run`` under an audit hook that logs the files it opens for
# writing (or renames) inside the workdir, so the test can check that only process 0 wrote; some
# then run the ragged evaluation (RAGGED) in the same JAX runtime.
ARGS = ["--config", f"{ROOT}/configs/quickstart.py:smoke", "--config.layouts=(0,)",
        "--config.attacks=('fgsm',)", "--config.directions=('total',)", "--config.eps=(8.0,)",
        "--config.train.num_steps=2", "--config.train.eval_every=2",
        "--config.train.checkpoint_every=2", "--config.train.progress_bar=False",
        "--config.robust.enabled=False"]  # 2-step models: clean metrics can be 0 (no robust ARP).


# One process of a ragged evaluation: 15 test images in global batches of 6 (the last one 3 real
# + 3 padding) over the run's processes, clean and GB-MTA-PGD; process 0 writes the results as JSON
# to RAGGED_OUT. Compiles are counted from here on (the sweep before compiled its own programs).
RAGGED = """
import json, os
import jax
from configs import quickstart
from mtajax import attacks, directions, evaluate, models, parallel
from mtajax.data import pipeline, preprocess
from mtajax.train import assemble
pid, num = jax.process_index(), jax.process_count()
t = quickstart.get_config("smoke").train
builder = pipeline.prepare(t.dataset, t.data_dir, config=t.data_config)
source = builder.as_data_source(split="test")
loader = pipeline.Loader(t.dataset, [source[i] for i in range(15)], batch_size=6, tasks=t.tasks,
                         train=False, seed=0, options=pipeline.Options(), shuffle=False,
                         drop_remainder=False, process_index=pid, process_count=num,
                         class_weights=None, pad=True)
tasks = assemble.make_tasks(t)
predict, state = models.pure_predict(assemble.make_model(t, tasks))
mesh = parallel.make_mesh()
spec = attacks.Attack("pgd", directions.gbmta(), num_steps=2, options=(("unroll", 1),))
before = evaluate._compiled._cache_size()
clean = evaluate.evaluate(predict, state, loader, tasks, mesh=mesh)
attacked = evaluate.evaluate(predict, state, loader, tasks, spec=spec, eps=8.0,
                             bounds=preprocess.input_bounds(), baselines=clean.losses, mesh=mesh,
                             loop="rolled")
if pid == 0:
  with open(os.environ["RAGGED_OUT"], "w") as f:
    json.dump({"shapes": sorted({loader.batch(s)["image"].shape[0] for s in range(3)}),
               "compiles": evaluate._compiled._cache_size() - before, "devices": mesh.size,
               "clean": [clean.metrics, clean.losses],
               "attacked": [attacked.metrics, attacked.losses]}, f)
"""


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
except SystemExit as e:  # absl's app.run exits; a failure keeps its status.
  if e.code:
    raise
finally:
  with open(log, "w") as f:
    json.dump(writes, f)
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(tmp: pathlib.Path, workdir: str, name: str, extra=(), ragged=None) -> subprocess.Popen:
  env = {**os.environ, "MTAJAX_JAX_CACHE": str(ROOT / ".jax_cache"), "PYTHONPATH": str(ROOT),
         "WORKDIR": str(tmp / workdir), "WRITE_LOG": str(tmp / f"{name}.writes.json")}
  if ragged:
    env["RAGGED_OUT"] = str(tmp / ragged)
  script = HOOKED + (RAGGED if ragged else "")
  return subprocess.Popen([sys.executable, "-c", script, "sweep", *ARGS,
                           f"--config.workdir={workdir}", *extra], cwd=tmp, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(procs: list[subprocess.Popen]) -> None:
  for proc in procs:
    try:
      out, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:  # Unequal local shapes used to hang in shard_batch.
      for p in procs:
        p.kill()
      raise
    assert proc.returncode == 0, out[-3000:]


def _records(workdir: pathlib.Path) -> dict[str, dict]:
  records = [json.loads(line) for line in (workdir / "results.jsonl").read_text().splitlines()]
  return {r["key"]: r for r in records}


def _distributed(tmp: pathlib.Path, workdir: str, tag: str, *also: subprocess.Popen,
                 ragged=None) -> None:
  port = _free_port()
  procs = [*also] + [_start(tmp, workdir, f"{tag}{i}", [
      "--config.distributed.enabled=True",
      f"--config.distributed.coordinator_address=localhost:{port}",
      "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}"],
                            ragged) for i in range(2)]
  _finish(procs)


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> pathlib.Path:
  """The sweeps' folder: single (then the 1-process ragged evaluation), multi (2 processes), multi
  resumed (2 processes, then the 2-process ragged evaluation)."""
  from configs import quickstart  # pylint: disable=g-import-not-at-top
  from mtajax.data import pipeline  # pylint: disable=g-import-not-at-top
  tmp = tmp_path_factory.mktemp("distributed")
  t = quickstart.get_config("smoke").train  # The dataset, for all the runs (data_dir relative).
  pipeline.prepare(t.dataset, tmp / t.data_dir, config=t.data_config)
  _distributed(tmp, "multi", "first", _start(tmp, "single", "single", ragged="ragged1.json"))
  _distributed(tmp, "multi", "resumed", ragged="ragged2.json")
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


def test_two_process_ragged_evaluation_equals_one_process(sweeps):
  one, two = (json.loads((sweeps / f"ragged{n}.json").read_text()) for n in (1, 2))
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
