"""mtajax.run_import: the ``import`` run mode stores a TreeMTL checkpoint as a trained model that
``attack`` and ``report`` use (no torch needed: the checkpoint is an .npz of a state_dict)."""

import json

import numpy as np
import pytest

from mtajax import models
from mtajax.models import torch_import


@pytest.mark.slow
def test_import_mode_stores_a_final_model_that_attack_and_report_use(tmp_path):
  from configs import quickstart  # pylint: disable=g-import-not-at-top
  from mtajax import run  # pylint: disable=g-import-not-at-top
  from mtajax.train import checkpoint, ensure, load  # pylint: disable=g-import-not-at-top
  config = quickstart.get_config("smoke")
  config.workdir = str(tmp_path / "work")
  t = config.train
  t.data_dir = str(tmp_path / "tfds")
  t.data_config = dict(resolution=32, num_train=8, num_test=2, seed=0)
  t.backbone, t.width, t.tasks = "resnet34", None, ("depth_zbuffer",)  # the smallest real model
  config.layouts, config.attacks, config.directions = (0,), ("fgsm",), ("total",)
  config.eval_batch_size, config.eval_max_batches, config.examples_eps = 2, 1, (8.0,)
  rng = np.random.default_rng(0)
  shapes = torch_import.reference_shapes("resnet34", {"depth_zbuffer": 1}, 0, "MTSeqModel")
  state = {k: (np.full(s, 5) if k.endswith("tracked") else
               rng.normal(size=s) * (0.1 if "running" in k else 1.0 / np.sqrt(np.prod(s[1:]))))
           for k, s in shapes.items()}
  state = {k: np.abs(v) + 0.5 if k.endswith("running_var") else v for k, v in state.items()}
  np.savez(tmp_path / "depth.npz", **state)
  config.checkpoint = str(tmp_path / "depth.npz")

  run.run("import", config)
  model_dir = tmp_path / "work" / "models" / ensure.model_id(ensure.train_config(config, 0))
  assert checkpoint.latest_step(model_dir / "checkpoints") == t.num_steps
  with pytest.raises(ValueError, match="already holds a model"):
    run.run("import", config)
  run.run("attack", config)  # Would refuse if the model were missing; must not train it.
  assert not (model_dir / "metrics.jsonl").exists()
  assert checkpoint.latest_step(model_dir / "checkpoints") == t.num_steps
  loaded = load.load_model(model_dir)
  x = rng.uniform(-100, 100, (1, 33, 41, 3)).astype(np.float32)
  want = models.pure_predict(models.from_torch(tmp_path / "depth.npz", "resnet34",
                                               {"depth_zbuffer": 1}, 0))
  np.testing.assert_array_equal(loaded.predict(x)["depth_zbuffer"],
                                want[0](want[1], x)["depth_zbuffer"])
  records = [json.loads(line) for line in (tmp_path / "work" / "results.jsonl").open()]
  assert {(r["attack"], r["direction"]) for r in records} == {("clean", None), ("fgsm", "total")}
  attacked = next(r for r in records if r["attack"] == "fgsm")
  assert all(np.isfinite(v) for v in attacked["losses"].values())
  assert attacked["losses"]["depth_zbuffer"] != next(
      r for r in records if r["attack"] == "clean")["losses"]["depth_zbuffer"]
  run.run("report", config)
  assert (tmp_path / "work" / "report" / "report.md").exists()
