"""The `defend` mode: one small leaderboard run end to end, its re-run (nothing trained or
evaluated again), and bad input (one line, exit status 2, before training)."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import shutil

import pytest

from configs import defend as defend_config
from mtajax import defend
from mtajax import robust
from mtajax import run
from mtajax import tasks as tasks_lib
from mtajax.report import defend as report_defend
from mtajax.train import assemble
from mtajax.train import ensure

from fixtures import SMOKE_MODEL, smoke_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config(tmp_path):
  """The smoke config cut to one recipe (and its undefended twin) at one ε, training as the
  session's smoke sweep (fixtures.smoke_config)."""
  c = defend_config.get_config("smoke")
  c.workdir, c.train.data_dir = str(tmp_path / "work"), str(tmp_path / "tfds")
  c.train = smoke_config(tmp_path / "work", tmp_path / "tfds").train
  c.eval_batch_size, c.eval_max_batches = 8, 1
  c.defend.recipes = {"reference": {"mode": "reference", "eps": 8.0, "num_steps": 1}}
  c.defend.eps = (8.0,)
  c.defend.masking.large_eps = 32.0
  return c


def _table_rows(report: str) -> list[list[str]]:
  return [[c.strip() for c in line.strip("|").split("|")] for line in report.splitlines()
          if line.startswith("| 0 (5L)")]


def test_smoke_leaderboard_end_to_end_and_rerun_reuses_everything(smoke_sweep, tmp_path,
                                                                  monkeypatch):
  config = _config(tmp_path)
  # The undefended model is the session's smoke model (same training config): only the
  # defended one trains here.
  shutil.copytree(smoke_sweep / "tfds", tmp_path / "tfds")
  shutil.copytree(smoke_sweep / "work" / "models" / SMOKE_MODEL,
                  tmp_path / "work" / "defend" / "none-s0" / "models" / SMOKE_MODEL)
  run.run("defend", config)
  work = tmp_path / "work"
  report = (work / "report" / "defend.md").read_text()
  rows = _table_rows(report)
  assert [(r[1], r[2]) for r in rows] == [("none", "0"), ("reference", "0")]
  assert rows[0][3] == "0.00" and rows[0][-3] == "undefended"
  assert rows[1][-3] in ("ok", "**FAILS a check**")
  assert rows[1][-1] == "4"  # one I-FGSM step (2 passes) + the clean and the adversarial update
  assert (work / "report" / "defend_pareto.png").read_bytes()[:4] == b"\x89PNG"

  records = [json.loads(line) for line in (work / "results.jsonl").read_text().splitlines()]
  assert [(r["attack"], r["adv_training"], r["suite"], r["eps"]) for r in records] == [
      ("robust", "none", "smoke", 8.0), ("robust", "reference", "smoke", 8.0)]
  assert [r["model"] for r in records] == ["synthetic-small-L0-none-s0",
                                           "synthetic-small-L0-reference-s0"]
  checks = {r["model"]: {c["name"]: c for c in r["checks"]}
            for r in map(json.loads, (work / "defend.jsonl").read_text().splitlines())
            if r["kind"] == "masking"}
  assert set(checks["synthetic-small-L0-none-s0"]) == {"eps_sweep", "more_steps", "gradients"}
  ref = checks["synthetic-small-L0-reference-s0"]
  assert set(ref) == {"eps_sweep", "transfer", "more_steps", "gradients"}
  # The checks reuse the stored robust ARP (same suite, ε, random starts).
  assert ref["eps_sweep"]["numbers"]["arp@eps8"] == records[1]["arp"]
  assert ref["transfer"]["numbers"]["whitebox_arp"] == records[1]["arp"]
  assert ref["more_steps"]["numbers"]["arp"] == records[1]["arp"]
  for name, cell in zip(report_defend.CHECKS, rows[1][5:9]):
    assert cell == ("pass" if ref[name]["passed"] else "**FAIL**")
  # The stored work's seconds: the defended model's training (the undefended one was copied in,
  # its training not timed here), both models' robust evaluations and masking checks.
  stored = list(map(json.loads, (work / "defend.jsonl").read_text().splitlines()))
  train_s = [r["train_s"] for r in stored if r["kind"] == "train"]
  assert train_s[0] is None and train_s[1] > 0
  robust_s = sum(r["time_s"] for r in records)
  checks_s = sum(r["seconds"] for r in stored if r["kind"] == "masking")
  stored_line = (f"The table's stored work: training {train_s[1]:.0f} s (1 of 2 rows unknown), "
                 f"robust evaluations {robust_s:.0f} s, masking checks {checks_s:.0f} s.")
  assert stored_line in report.splitlines()
  # Clean loss: the ARP of the defended model's clean metrics against its undefended twin's.
  t = ensure.train_config(config, 0)
  want = tasks_lib.arp(records[0]["clean_metrics"], records[1]["clean_metrics"],
                       assemble.make_tasks(t)).total
  assert rows[1][3] == f"{want:.2f}"

  def forbidden(*args, **kwargs):
    raise AssertionError("a complete workdir must not be trained or evaluated again")
  monkeypatch.setattr(ensure, "ensure_trained", forbidden)
  monkeypatch.setattr(robust, "evaluate", forbidden)
  run.run("defend", config)
  rerun = (work / "report" / "defend.md").read_text()
  assert _table_rows(rerun) == rows and stored_line in rerun.splitlines()
  assert len((work / "results.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("change, match", [
    (lambda d: setattr(d, "recipes", {"pgd": {"mode": "pgd"}}),
     "config.defend.recipes.pgd: unknown recipe mode 'pgd'; set its 'mode' to one of"),
    (lambda d: setattr(d, "recipes", {"fat": {"mode": "fat", "steps": 3}}),
     r"config.defend.recipes.fat: unknown train.adv fields \['steps'\]"),
    (lambda d: setattr(d, "recipes", {"none": {"mode": "fat"}}),
     "'none' is the undefended model"),
    (lambda d: setattr(d, "recipes", {"fat": {"mode": "fat", "eps": -8.0}}),
     "config.defend.recipes.fat.eps must be >= 0"),
    (lambda d: setattr(d, "eps", (-4.0, 8.0)), "config.defend.eps must hold numbers >= 0"),
    (lambda d: setattr(d, "suites", ("smoke", "strongest")),
     "config.defend.suites: unknown suite 'strongest'"),
    (lambda d: setattr(d.masking, "suite", "strongest"),
     "config.defend.masking.suite: unknown suite 'strongest'"),
    (lambda d: setattr(d.masking, "large_eps", 8.0), "large_eps must exceed every"),
])
def test_bad_input_is_one_line_before_training(tmp_path, change, match):
  config = _config(tmp_path)
  change(config.defend)
  with pytest.raises(ValueError, match=match) as e:
    defend.validate(config)
  assert "\n" not in str(e.value)
  with pytest.raises(ValueError, match=match):
    run.run("defend", config)
  assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("arg", [None, "cpu", "smoke"])
def test_committed_configs_validate_locked_as_the_cli_loads_them(arg):
  """`mtajax.run` locks the config; recipes with nested overrides (``attack_options``) once failed
  there on a key the default ``train.adv`` lacks."""
  config = defend_config.get_config(arg)
  config.lock()
  defend.validate(config)
  models = defend.model_list(config)
  names = {m.recipe for m in models}
  assert names == {"none", *config.defend.recipes}
  for m in models:
    assert m.t.adv.to_dict() == {**config.train.adv.to_dict(),
                                 **defend.recipes(config)[m.recipe],
                                 "attack_options": {**config.train.adv.attack_options,
                                                    **defend.recipes(config)[m.recipe].get(
                                                        "attack_options", {})}}


def test_bad_recipe_exits_2_with_one_line(tmp_path):
  done = subprocess.run(
      [sys.executable, "-m", "mtajax.run", "defend", "--config",
       f"{ROOT}/configs/defend.py:smoke", f"--config.workdir={tmp_path / 'work'}",
       "--config.defend.recipes.fat.mode=pgd"],
      cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
      timeout=120, check=False)
  assert done.returncode == 2, done.stderr[-2000:]
  error = [line for line in done.stderr.splitlines() if line.startswith("error:")]
  assert error == ["error: config.defend.recipes.fat: unknown recipe mode 'pgd'; set its 'mode' "
                   "to one of adversarial, fat, mixed, reference, trades."]
  assert not (tmp_path / "work").exists()


def test_report_with_two_rows_per_recipe(tmp_path):
  """Two seeds of one recipe (the leaderboard's normal case; the smoke config has one row each):
  the Pareto figure once failed on the second row of a recipe."""
  rows = [report_defend.Row(layout="0", sharing_level=1.0, recipe=recipe, seed=seed,
                            clean_loss=loss, robust={("fast", 8.0): arp},
                            converged={("fast", 8.0): False}, checks={}, reasons=[],
                            train_s=1.0, passes_per_example=1.0, robust_s=2.0,
                            checks_s=checks_s)
          for recipe, seed, loss, arp, checks_s in [
              ("none", 0, 0.0, 60.0, 2.5), ("none", 1, 0.0, 58.0, 3.0),
              ("fat", 0, 6.5, 13.8, None), ("fat", 1, 6.3, 11.5, 4.0)]]
  path = report_defend.write(rows, tmp_path, suites=("fast",), eps=(8.0,), seconds=1.0)
  assert (tmp_path / "defend_pareto.png").stat().st_size > 0
  text = path.read_text()
  assert "fat" in text
  # A re-run that reuses every record takes a second; the report also gives the stored work's cost.
  assert "This run took 1 s." in text
  assert ("The table's stored work: training 4 s, robust evaluations 8 s, masking checks 10 s "
          "(1 of 4 rows unknown).") in text
  old = [dataclasses.replace(r, checks_s=None) for r in rows]
  assert report_defend.stored_seconds(old) == (
      "The table's stored work: training 4 s, robust evaluations 8 s, masking checks unknown "
      "(records written before it was timed).")
