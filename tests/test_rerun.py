"""Re-runs on a complete workdir: stored examples reused, no model needed (deleted or damaged),
and the report from stored records byte-identical to the one the fresh run wrote."""

import pathlib
import shutil

import pytest

from configs import quickstart
from mtajax import run
from mtajax import sweep
from mtajax.train import checkpoint

from fixtures import damage


def _config(workdir: pathlib.Path, data_dir: pathlib.Path):
  """The smoke config cut to one model, one attacked cell, 4 train steps, no robust suite."""
  c = quickstart.get_config("smoke")
  c.workdir, c.train.data_dir = str(workdir), str(data_dir)
  c.layouts, c.directions, c.eps = (0,), ("gbmta",), (8.0,)
  c.train.num_steps, c.train.eval_every, c.train.checkpoint_every = 4, 4, 2
  c.train.progress_bar = False
  c.robust.enabled = False
  return c


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
  """A fresh sweep: (its directory, the model's checkpoint dir, the files it wrote)."""
  root = tmp_path_factory.mktemp("rerun")
  config = _config(root / "fresh", root / "tfds")
  run.run("sweep", config)
  workdir = pathlib.Path(config.workdir)
  ckpts = workdir / "models" / sweep.model_id(sweep.train_config(config, 0)) / "checkpoints"
  files = {n: (workdir / n).read_bytes() for n in ("results.jsonl", "examples.npz",
                                                    "report/report.md")}
  return root, ckpts, files


def _copy(fresh, tmp_path) -> pathlib.Path:
  root, _, _ = fresh
  shutil.copytree(root / "fresh", tmp_path / "w")
  return tmp_path / "w"


def _unchanged(workdir: pathlib.Path, files, mtime: int) -> None:
  for name, data in files.items():
    assert (workdir / name).read_bytes() == data, name
  assert (workdir / "examples.npz").stat().st_mtime_ns == mtime  # Not rewritten.


def test_report_from_stored_records_equals_the_fresh_one(fresh, tmp_path):
  root, _, files = fresh
  workdir = _copy(fresh, tmp_path)
  (workdir / "report" / "report.md").unlink()
  run.run("report", _config(workdir, root / "tfds"))
  assert (workdir / "report" / "report.md").read_bytes() == files["report/report.md"]


@pytest.mark.parametrize("mode", ["sweep", "attack"])
def test_rerun_reuses_the_examples_and_needs_no_model(fresh, tmp_path, mode):
  root, ckpts, files = fresh
  workdir = _copy(fresh, tmp_path)
  mtime = (workdir / "examples.npz").stat().st_mtime_ns
  config = _config(workdir, root / "tfds")
  shutil.rmtree(workdir / "models")  # Every record is stored: no model is needed...
  run.run(mode, config)
  _unchanged(workdir, files, mtime)
  assert not (workdir / "models").exists()  # ...so none is trained again.
  shutil.copytree(ckpts.parent, workdir / "models" / ckpts.parent.name)
  damage(workdir / "models" / ckpts.parent.name / "checkpoints" / "4", "flip")
  run.run(mode, config)  # Nor loaded: its damaged final step is not read.
  _unchanged(workdir, files, mtime)


def test_damaged_model_with_records_missing_names_the_step_to_delete(fresh, tmp_path):
  root, ckpts, _ = fresh
  workdir = _copy(fresh, tmp_path)
  results = workdir / "results.jsonl"
  results.write_text("".join(results.read_text().splitlines(keepends=True)[:-1]))
  step = workdir / "models" / ckpts.parent.name / "checkpoints" / "4"
  damage(step, "flip")
  with pytest.raises(checkpoint.DamagedCheckpointError,
                     match=f"delete {step} to resume from the previous step"):
    run.run("attack", _config(workdir, root / "tfds"))
