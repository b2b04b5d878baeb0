"""Train loop, Orbax checkpoints (SIGKILL + resume, corrupt/incompatible dirs) and load_model."""

import json
import os
from pathlib import Path
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

import mtajax  # noqa: F401  (XLA:CPU workaround before JAX initialises)
from mtajax import attacks
from mtajax import directions
from mtajax import models
from mtajax.data import preprocess
from mtajax.train import load_model
from mtajax.train import loop
from mtajax.train import step as step_lib
from mtajax.train import assemble
from mtajax.train import checkpoint

from fixtures import NUM_STEPS, tiny_config


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
  """A persistent XLA cache shared with the child process: each run compiles the same step."""
  path = str(tmp_path_factory.mktemp("xla_cache"))
  old = (jax.config.jax_compilation_cache_dir,
         jax.config.jax_persistent_cache_min_compile_time_secs)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  yield path
  jax.config.update("jax_compilation_cache_dir", old[0])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_dir):
  """An uninterrupted tiny run: (config, workdir, result)."""
  workdir = tmp_path_factory.mktemp("uninterrupted")
  config = tiny_config(data_dir)
  return config, workdir, loop.train(config, workdir)


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_metrics_jsonl_and_keep_last_k(finished):
  config, workdir, result = finished
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  train = [r for r in records if r["split"] == "train"]
  assert [r["step"] for r in train] == list(range(1, NUM_STEPS + 1))
  assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in train)
  for r in train:  # the logged loss is the weighted sum of the task losses (weights 1).
    assert r["loss"] == pytest.approx(sum(r[f"loss/{t}"] for t in config.tasks), rel=1e-5)
  evals = [r for r in records if r["split"] == "test"]
  assert len(evals) == 1 and set(evals[0]) >= set(config.tasks)
  assert evals[0]["segment_semantic"] == result.eval_metrics["segment_semantic"]
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert steps == [NUM_STEPS - 1, NUM_STEPS]


_CHILD = textwrap.dedent("""
  import sys, time
  import jax
  import mtajax
  jax.config.update("jax_compilation_cache_dir", {cache!r})
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  from mtajax.data import pipeline
  from mtajax.train import loop
  sys.path.insert(0, {tests!r})
  from fixtures import tiny_config
  batch = pipeline.Loader.batch
  def slow_batch(self, step):  # slows the run down so that the parent can kill it mid-way
    if self.train and step >= 2:
      time.sleep(0.5)
    return batch(self, step)
  pipeline.Loader.batch = slow_batch
  loop.train(tiny_config({data!r}), {workdir!r})
""")


def test_sigkill_then_resume_gives_identical_params(finished, data_dir, compilation_cache,
                                                    tmp_path):
  _, _, uninterrupted = finished
  workdir = tmp_path / "killed"
  script = _CHILD.format(cache=compilation_cache, tests=str(Path(__file__).parent),
                         data=str(data_dir), workdir=str(workdir))
  child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
  ckpts = workdir / "checkpoints"
  while not (ckpts / "3").is_dir():
    # A child that ends (or crashes) before checkpoint 3 fails here; no wall-clock limit.
    assert child.poll() is None, child.stderr.read().decode()[-2000:]
    time.sleep(0.1)
  os.kill(child.pid, signal.SIGKILL)
  child.wait()
  child.stderr.close()
  saved = sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
  assert 3 in saved and max(saved) < NUM_STEPS  # killed mid-run
  resumed = loop.train(tiny_config(data_dir), workdir)
  assert int(resumed.state["step"]) == NUM_STEPS
  for a, b in zip(_leaves(uninterrupted.state), _leaves(resumed.state)):
    np.testing.assert_array_equal(a, b)  # bit-identical on CPU
  # The killed run's steps after its last checkpoint are dropped: every step is logged once.
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records if r["split"] == "train"] == list(range(1, NUM_STEPS + 1))


def test_load_model_is_usable_by_the_attacks(finished):
  config, workdir, result = finished
  model = load_model(workdir / "checkpoints")
  assert model.step == NUM_STEPS and [t.name for t in model.tasks] == list(config.tasks)
  for a, b in zip(_leaves(result.state["params"]), _leaves(model.params)):
    np.testing.assert_array_equal(a, b)
  loader_batch = _eval_batch(config)
  adv = attacks.pgd(model.loss_fn("image"), loader_batch["image"], loader_batch,
                    direction=directions.gbmta(), eps=8.0, bounds=preprocess.input_bounds(),
                    num_steps=2, loop="rolled")
  clean = model.loss_fn("image")(loader_batch["image"], loader_batch)
  attacked = model.loss_fn("image")(adv.x_adv, loader_batch)
  gain = sum(np.mean(np.log(attacked[t]) - np.log(clean[t])) for t in clean)
  assert gain > 0 and np.abs(adv.x_adv - loader_batch["image"]).max() <= 8.0


def _eval_batch(config):
  from mtajax.data import pipeline  # pylint: disable=g-import-not-at-top
  loader = pipeline.dataset(config.dataset, config.data_dir, "test", batch_size=4,
                            tasks=config.tasks, config=config.data_config)
  return loader.batch(0)


def test_adversarial_inputs_attack_the_eval_mode_model(finished):
  config, _, result = finished
  tasks = assemble.make_tasks(config)
  apply, _, _ = models.pure_apply(assemble.make_model(config, tasks))
  batch = _eval_batch(config)
  adv = config.adv.copy_and_resolve_references()
  adv.mode, adv.num_steps = "reference", 2
  params, stats = result.state["params"], result.state["batch_stats"]
  got = step_lib.adversarial_inputs(apply, tasks, params, stats, batch, adv)
  model = load_model(finished[1])
  want = attacks.pgd(model.loss_fn("image"), batch["image"], batch, direction=directions.gbmta(),
                     eps=8.0, bounds=preprocess.input_bounds(), num_steps=2).x_adv
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-4)
  adv.mode, adv.tau = "fat", 2  # tau >= K: no example stops early, FAT equals PGD.
  got = step_lib.adversarial_inputs(apply, tasks, params, stats, batch, adv)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-4)


def test_half_written_checkpoint_is_never_restored(finished, tmp_path):
  _, workdir, _ = finished
  copy = tmp_path / "checkpoints"
  shutil.copytree(workdir / "checkpoints", copy)
  partial = copy / f"{NUM_STEPS + 1}.orbax-checkpoint-tmp-1234567"  # what a killed save leaves
  shutil.copytree(copy / str(NUM_STEPS), partial)
  (partial / "state" / "_METADATA").unlink(missing_ok=True)
  assert checkpoint.latest_step(copy) == NUM_STEPS
  assert load_model(copy).step == NUM_STEPS


def test_missing_corrupt_and_incompatible_checkpoints_raise(finished, tmp_path):
  config, workdir, _ = finished
  with pytest.raises(ValueError, match="does not exist"):
    load_model(tmp_path / "nowhere")
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="No complete checkpoint"):
    load_model(tmp_path / "empty")

  corrupt = tmp_path / "corrupt"
  shutil.copytree(workdir / "checkpoints", corrupt)
  for f in (corrupt / str(NUM_STEPS) / "state").rglob("*"):
    if f.is_file() and f.stat().st_size > 0 and "metadata" not in f.name:
      f.write_bytes(b"garbage")
  with pytest.raises(ValueError, match=f"damaged .*; delete {corrupt}/{NUM_STEPS} to resume"):
    load_model(corrupt)

  incompatible = tmp_path / "incompatible"
  shutil.copytree(workdir / "checkpoints", incompatible)
  meta_file = incompatible / str(NUM_STEPS) / "meta" / "metadata"
  meta = json.loads(meta_file.read_text())
  meta["config"]["width"] = 8
  meta_file.write_text(json.dumps(meta))
  with pytest.raises(ValueError, match="does not match|incompatible"):
    load_model(incompatible)
  meta["format"] = "something-else"
  meta_file.write_text(json.dumps(meta))
  with pytest.raises(ValueError, match="not an mtajax"):
    load_model(incompatible)


def test_resuming_with_another_config_fails_and_keeps_checkpoints(finished, tmp_path):
  config, workdir, _ = finished
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  before = sorted(p.name for p in (copy / "checkpoints").iterdir())
  other = tiny_config(config.data_dir)
  other.lr = 5e-4
  with pytest.raises(ValueError, match="different config"):
    loop.train(other, copy)
  assert sorted(p.name for p in (copy / "checkpoints").iterdir()) == before


def test_metrics_log_drops_a_torn_line_and_steps_after_the_resume_point(tmp_path):
  path = tmp_path / "metrics.jsonl"
  lines = [{"step": s, "split": "train", "loss": 1.0 / s} for s in (1, 2, 3)]
  lines.insert(2, {"step": 2, "split": "test", "mIoU": 0.5})
  path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 4, "spl')
  assert [r["step"] for r in loop._MetricsLog.read(path)] == [1, 2, 2, 3]  # Torn line skipped.
  log = loop._MetricsLog(path, start=2)  # Resuming from the step-2 checkpoint.
  assert loop._MetricsLog.read(path) == lines[:3]
  log.write([{"step": 3, "split": "train", "loss": 0.5}])
  assert [r["step"] for r in loop._MetricsLog.read(path)] == [1, 2, 2, 3]
  assert path.read_text().count("\n") == 4


def test_non_finite_loss_is_an_error():
  loop._check_finite(3, {"loss": 1.0})
  with pytest.raises(FloatingPointError, match="Non-finite training loss at step 7"):
    loop._check_finite(7, {"loss": 1.0, "loss/normal": float("nan")})
