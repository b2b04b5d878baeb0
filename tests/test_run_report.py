"""run_report: the Fig. 6 examples stored with the key of what they were made for."""

import numpy as np

from mtajax import run_report


def test_examples_are_stored_with_their_key(tmp_path):
  path = tmp_path / "examples.npz"
  ex = {"image_rgb": np.zeros((4, 4, 3), np.uint8), "perturbed": {8.0: np.ones((4, 4, 3))},
        "preds_clean": {"depth": np.zeros((4, 4, 1))}, "preds_adv": {"depth": np.ones((4, 4, 1))},
        "tasks": ["depth"]}
  run_report.save_examples(path, ex, "k1")
  loaded = run_report.load_examples(path, "k1")
  assert loaded["tasks"] == ["depth"] and loaded["perturbed"][8.0].sum() == 48
  assert run_report.load_examples(path, "k2") is None
  assert run_report.load_examples(tmp_path / "missing.npz", "k1") is None
