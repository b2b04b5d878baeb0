"""One model identity for the sweep, the train loop's resume check and the record keys."""

import pathlib

import pytest

from mtajax import sweep
from mtajax.train import config as config_lib
from mtajax.train import ensure
from mtajax.train import loop

from fixtures import SMOKE_STEPS as N, copy_smoke_sweep


def _copy(smoke_sweep, tmp_path):
  """A writable copy of the session's smoke sweep (its model trained to N = SMOKE_STEPS steps,
  checkpoints at N / 2 and N): (its config, its workdir)."""
  config = copy_smoke_sweep(smoke_sweep, tmp_path)
  return config, pathlib.Path(config.workdir)


def _train(config, workdir, capsys):
  loaded = ensure.ensure_trained(ensure.train_config(config, 0), workdir)
  return loaded, [l for l in capsys.readouterr().out.splitlines() if l.startswith("training ")]


def test_train_longer_resumes_and_makes_new_records(smoke_sweep, tmp_path, capsys):
  config, workdir = _copy(smoke_sweep, tmp_path)
  before = sweep.current_keys(config)
  config.train.num_steps = N + 2
  loaded, log = _train(config, workdir, capsys)
  assert log == [f"training synthetic-small-L0 ({N + 2} steps)"] and loaded.step == N + 2
  assert not before & sweep.current_keys(config)  # No record of the N-step model is reused.
  steps = [r for r in loop._MetricsLog.read(workdir / "models" / "synthetic-small-L0" /
                                            "metrics.jsonl") if r["split"] == "train"]
  assert [r["step"] for r in steps] == list(range(1, N + 3))  # Resumed at N: each step logged once.
  config.train.num_steps = N  # Back to N steps: the kept step-N checkpoint, the old records.
  loaded, log = _train(config, workdir, capsys)
  assert log == [] and loaded.step == N and sweep.current_keys(config) == before


@pytest.mark.parametrize("change", [
    lambda t: setattr(t, "data_dir", "/moved/elsewhere"),
    lambda t: setattr(t, "progress_bar", True),
    lambda t: (setattr(t, "eval_every", 1), setattr(t, "checkpoint_every", 1),
               setattr(t, "log_every", 1), setattr(t, "keep_checkpoints", 1)),
], ids=["move data_dir", "progress bar", "cadences"])
def test_run_only_changes_keep_the_model_and_its_records(smoke_sweep, tmp_path, capsys, change):
  config, workdir = _copy(smoke_sweep, tmp_path)
  before = sweep.current_keys(config)
  change(config.train)
  loaded, log = _train(config, workdir, capsys)
  assert log == [] and loaded.step == N  # Not trained again.
  assert sweep.current_keys(config) == before


def test_change_lr_is_another_model(smoke_sweep, tmp_path, capsys):
  config, workdir = _copy(smoke_sweep, tmp_path)
  before = sweep.current_keys(config)
  config.train.lr *= 2
  with pytest.raises(ValueError, match=r"different config \(fields \['lr'\]\)"):
    _train(config, workdir, capsys)
  with pytest.raises(ValueError, match=r"different config \(fields \['lr'\]\)"):
    loop.train(ensure.train_config(config, 0), workdir / "models" / "synthetic-small-L0")
  assert not before & sweep.current_keys(config)


def test_a_step_count_whose_checkpoint_is_gone_is_a_one_line_error(smoke_sweep, tmp_path, capsys):
  config, workdir = _copy(smoke_sweep, tmp_path)
  config.train.num_steps = 1  # Checkpoints exist at N / 2 and N only.
  with pytest.raises(ValueError, match=f"trained to {N} steps and its step 1 is not kept"):
    _train(config, workdir, capsys)


def test_identity_drops_exactly_the_run_only_keys():
  t = config_lib.default_config()
  assert set(config_lib.identity(t)) == set(t.to_dict()) - set(config_lib.RUN_ONLY_KEYS)
  assert config_lib.identity(t) == config_lib.identity(t.to_dict())
  assert "lr" in config_lib.identity(t) and "layout" in config_lib.identity(t)
