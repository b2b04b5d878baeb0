"""One model identity for the sweep, the train loop's resume check and the record keys."""

import shutil

import pytest

from configs import quickstart
from mtajax import sweep
from mtajax.train import config as config_lib
from mtajax.train import ensure
from mtajax.train import loop


def _config(data_dir):
  config = quickstart.get_config("smoke")
  config.layouts, config.eps = (0,), (4.0, 8.0)
  t = config.train
  t.data_dir, t.data_config = str(data_dir), dict(resolution=16, num_train=16, num_test=4, seed=0)
  t.num_steps, t.checkpoint_every, t.eval_every, t.log_every = 4, 2, 4, 3
  t.eval_batch_size, t.progress_bar = 4, False
  return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A workdir holding the smoke model trained to 4 steps: (config, workdir)."""
  root = tmp_path_factory.mktemp("identity")
  config = _config(root / "data")
  ensure.ensure_trained(ensure.train_config(config, 0), root / "work")
  return config, root / "work"


def _copy(trained, tmp_path):
  config, workdir = trained
  shutil.copytree(workdir, tmp_path / "work")
  return config.copy_and_resolve_references(), tmp_path / "work"


def _train(config, workdir, capsys):
  loaded = ensure.ensure_trained(ensure.train_config(config, 0), workdir)
  return loaded, [l for l in capsys.readouterr().out.splitlines() if l.startswith("training ")]


def test_train_longer_resumes_and_makes_new_records(trained, tmp_path, capsys):
  config, workdir = _copy(trained, tmp_path)
  before = sweep.current_keys(config)
  config.train.num_steps = 6
  loaded, log = _train(config, workdir, capsys)
  assert log == ["training synthetic-small-L0 (6 steps)"] and loaded.step == 6
  assert not before & sweep.current_keys(config)  # No record of the 4-step model is reused.
  steps = [r for r in loop._MetricsLog.read(workdir / "models" / "synthetic-small-L0" /
                                            "metrics.jsonl") if r["split"] == "train"]
  assert [r["step"] for r in steps] == list(range(1, 7))  # Resumed at 4: each step logged once.
  config.train.num_steps = 4  # Back to 4 steps: the kept step-4 checkpoint, the old records.
  loaded, log = _train(config, workdir, capsys)
  assert log == [] and loaded.step == 4 and sweep.current_keys(config) == before


@pytest.mark.parametrize("change", [
    lambda t: setattr(t, "data_dir", "/moved/elsewhere"),
    lambda t: setattr(t, "progress_bar", True),
    lambda t: (setattr(t, "eval_every", 1), setattr(t, "checkpoint_every", 1),
               setattr(t, "log_every", 1), setattr(t, "keep_checkpoints", 1)),
], ids=["move data_dir", "progress bar", "cadences"])
def test_run_only_changes_keep_the_model_and_its_records(trained, capsys, change):
  config, workdir = trained
  before = sweep.current_keys(config)
  config = config.copy_and_resolve_references()
  change(config.train)
  loaded, log = _train(config, workdir, capsys)
  assert log == [] and loaded.step == 4  # Not trained again.
  assert sweep.current_keys(config) == before


def test_change_lr_is_another_model(trained, capsys):
  config, workdir = trained
  before = sweep.current_keys(config)
  config = config.copy_and_resolve_references()
  config.train.lr *= 2
  with pytest.raises(ValueError, match=r"different config \(fields \['lr'\]\)"):
    _train(config, workdir, capsys)
  with pytest.raises(ValueError, match=r"different config \(fields \['lr'\]\)"):
    loop.train(ensure.train_config(config, 0), workdir / "models" / "synthetic-small-L0")
  assert not before & sweep.current_keys(config)


def test_a_step_count_whose_checkpoint_is_gone_is_a_one_line_error(trained, tmp_path, capsys):
  config, workdir = _copy(trained, tmp_path)
  config.train.num_steps = 1  # Checkpoints exist at 2 and 4 only.
  with pytest.raises(ValueError, match="trained to 4 steps and its step 1 is not kept"):
    _train(config, workdir, capsys)


def test_identity_drops_exactly_the_run_only_keys():
  t = config_lib.default_config()
  assert set(config_lib.identity(t)) == set(t.to_dict()) - set(config_lib.RUN_ONLY_KEYS)
  assert config_lib.identity(t) == config_lib.identity(t.to_dict())
  assert "lr" in config_lib.identity(t) and "layout" in config_lib.identity(t)
