"""Damaged checkpoints: checksums catch flipped bits, errors name the step to delete, training
falls back to the previous intact step (bit-identically), checkpoints without checksums load."""

import json
import shutil

import jax
import numpy as np
import pytest

import mtajax  # noqa: F401  (XLA:CPU workaround before JAX initialises)
from mtajax.train import checkpoint
from mtajax.train import load_model
from mtajax.train import loop

from fixtures import damage, tiny_config

STEPS = 4  # Checkpoints at steps 2 and 4.


def _config(data_dir):
  c = tiny_config(data_dir)
  c.num_steps = c.eval_every = STEPS
  c.checkpoint_every, c.keep_checkpoints = 2, 3
  return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """An uninterrupted tiny run: (config, workdir, final state)."""
  config = _config(tmp_path_factory.mktemp("data"))
  workdir = tmp_path_factory.mktemp("run")
  return config, workdir, loop.train(config, workdir).state


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.mark.parametrize("how", ["flip", "truncate", "garble"])
def test_damaged_step_is_one_line_naming_the_step_and_the_fix(trained, tmp_path, how):
  _, workdir, _ = trained
  ckpts = tmp_path / "checkpoints"
  shutil.copytree(workdir / "checkpoints", ckpts)
  damage(ckpts / str(STEPS), how)
  with pytest.raises(ValueError) as e:
    load_model(ckpts)
  message = str(e.value)
  assert len(message.splitlines()) == 1 and "pybind" not in message and "<bound" not in message
  assert f"delete {ckpts}/{STEPS} to resume from the previous step" in message
  assert load_model(ckpts, step=2).step == 2  # The previous step is intact.


def test_training_falls_back_to_the_previous_intact_step(trained, tmp_path, capsys):
  config, workdir, uninterrupted = trained
  run = tmp_path / "run"
  shutil.copytree(workdir, run)
  damage(run / "checkpoints" / str(STEPS), "flip")
  resumed = loop.train(config, run).state
  out = capsys.readouterr().out
  assert f"checkpoint {run / 'checkpoints' / str(STEPS)} is damaged" in out
  assert "resuming from step 2" in out
  for a, b in zip(_leaves(uninterrupted), _leaves(resumed)):
    np.testing.assert_array_equal(a, b)  # As if never interrupted.
  assert (run / "checkpoints" / f"{STEPS}.damaged").is_dir()  # Kept, not deleted.
  assert checkpoint.latest_step(run / "checkpoints") == STEPS  # Saved anew, and intact.
  for a, b in zip(_leaves(uninterrupted["params"]), _leaves(load_model(run).params)):
    np.testing.assert_array_equal(a, b)


def test_checkpoint_without_checksums_loads_unverified(trained, tmp_path):
  _, workdir, uninterrupted = trained
  ckpts = tmp_path / "checkpoints"
  shutil.copytree(workdir / "checkpoints", ckpts)
  meta_file = ckpts / str(STEPS) / "meta" / "metadata"
  meta = json.loads(meta_file.read_text())
  assert set(meta.pop("checksums")) == {jax.tree_util.keystr(p) for p, _ in
                                        jax.tree_util.tree_leaves_with_path(uninterrupted)}
  meta_file.write_text(json.dumps(meta))  # As written before the checksums existed.
  for a, b in zip(_leaves(uninterrupted["params"]), _leaves(load_model(ckpts).params)):
    np.testing.assert_array_equal(a, b)
