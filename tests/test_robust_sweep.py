"""The `robust` mode: records per (model, ε), same test images as the grid, resume, report."""

import json

import pytest

from configs import quickstart
from mtajax import robust
from mtajax import robust_sweep
from mtajax import run
from mtajax.train import ensure

from fixtures import copy_smoke_sweep


def _config(tmp_path):
  c = quickstart.get_config("smoke")
  c.workdir = str(tmp_path / "work")
  c.layouts = (0,)
  c.train.data_dir = str(tmp_path / "tfds")
  c.robust.eps = (4.0, 8.0)
  return c


def test_robust_mode_records_resume_and_report(smoke_sweep, tmp_path, monkeypatch):
  # The session's smoke model (fixtures.smoke_sweep), without its records.
  config = copy_smoke_sweep(smoke_sweep, tmp_path, results=False)
  config.robust.enabled, config.robust.eps = True, (4.0, 8.0)
  calls = []
  real = robust.evaluate

  def killed_after_one(*args, **kwargs):
    calls.append(kwargs["eps"])
    if len(calls) == 2:
      raise KeyboardInterrupt  # the job dies during the second ε
    return real(*args, **kwargs)
  monkeypatch.setattr(robust, "evaluate", killed_after_one)
  with pytest.raises(KeyboardInterrupt):
    run.run("robust", config)
  path = tmp_path / "work" / "results.jsonl"
  first = [json.loads(line) for line in path.read_text().splitlines()]
  assert [r["eps"] for r in first] == [4.0]

  calls.clear()
  monkeypatch.setattr(robust, "evaluate", lambda *a, **k: calls.append(k["eps"]) or real(*a, **k))
  run.run("robust", config)
  assert calls == [8.0]  # the stored ε was skipped
  records = [json.loads(line) for line in path.read_text().splitlines()]
  assert records[0] == first[0]
  assert [r["eps"] for r in records] == [4.0, 8.0]
  for r in records:
    assert r["attack"] == "robust" and r["model"] == "synthetic-small-L0"
    assert r["adv_training"] == "none" and isinstance(r["eps"], float)
    assert set(r["arp_per_task"]) == set(config.train.tasks) == set(r["envelope"])
    assert r["arp"] >= max(v for v in r["candidate_arp"].values() if v is not None)
    assert r["passes_per_image"] == 1 + 2 * (2 * 2 + 1 + 1)
    assert r["grid_passes_per_image"] == robust_sweep.grid_passes(config, 3)
    assert r["suite"] == "smoke" and isinstance(r["converged"], bool)
    assert r["trajectory"][-1] == {"candidate": robust.POLISH, "passes_per_image": 13.0,
                                   "arp": r["arp"]}
    assert set(r["at_last_step"]) == {"apgd:gbmta", "apgd:total"}
  # Same test images as the grid: the clean metrics equal the grid's clean record.
  calls.clear()
  run.run("sweep", config)
  assert calls == []  # robust records already stored
  clean = [json.loads(line) for line in path.read_text().splitlines()
           if json.loads(line)["attack"] == "clean"][0]
  for t, ms in clean["metrics"].items():
    for m, v in ms.items():
      assert records[1]["clean_metrics"][t][m] == pytest.approx(v, rel=1e-4, abs=1e-5)
  report = (tmp_path / "work" / "report" / "report.md").read_text()
  assert "**Robust ARP**" in report and "Robust evaluation: leaderboard" in report
  assert "forward + backward passes per image" in report
  assert "suite `smoke` (not a reference suite" in report and "Converged" in report
  rows = (tmp_path / "work" / "robust" / "synthetic-small-L0_eps8.jsonl").read_text().splitlines()
  assert len(rows) == 3 * 16  # clean + 2 candidates, 16 test images


def test_grid_compute_counts_every_cell():
  config = quickstart.get_config()
  # PGD and APGD x (3 Single + Total + GB-MTA: 2 passes a step; SignTotal: 1 + 3), 10 steps,
  # plus one scoring forward per cell (APGD: one more forward), plus the clean pass.
  per_step = 5 * 2 + 4
  assert robust_sweep.grid_passes(config, 3) == 1 + 2 * (10 * per_step + 6) + 6


@pytest.mark.parametrize("change, match", [
    (lambda c: setattr(c.robust, "suite", "strongest"), "config.robust.suite: unknown suite"),
    (lambda c: setattr(c.robust, "eps", (-1.0,)), "config.robust.eps must hold values >= 0"),
    (lambda c: setattr(c.robust, "chunk", 0), "config.robust.chunk must be a number of images"),
])
def test_bad_robust_config_is_one_line_before_training(tmp_path, change, match):
  config = _config(tmp_path)
  change(config)
  with pytest.raises(ValueError, match=match) as e:
    run.run("sweep", config)
  assert "\n" not in str(e.value)
  assert not (tmp_path / "work" / "models").exists()


def test_sweep_targets_share_the_grid_batches(tmp_path):
  config = _config(tmp_path)
  assert robust_sweep.record_key(config, ensure.train_config(config, 0), 8.0) != \
      robust_sweep.record_key(config, ensure.train_config(config, 0), 4.0)


def test_a_chunk_size_is_part_of_the_record_key_only_when_set(tmp_path):
  config = _config(tmp_path)
  t = ensure.train_config(config, 0)
  before = robust_sweep.record_key(config, t, 8.0)
  config.robust.chunk = None
  assert robust_sweep.record_key(config, t, 8.0) == before  # earlier releases' keys hold
  config.robust.chunk = 128
  assert robust_sweep.record_key(config, t, 8.0) != before
