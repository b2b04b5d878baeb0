"""robust.evaluate on a plain-JAX model (not mtajax.models): worst case, guarantee, cost, records,
threshold, bad input, and equal results on 1 and 8 (forced CPU) devices."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from fixtures import B, N, problem

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run(new_model: bool = False, **kwargs):
  """The smoke suite on fixtures.problem; ``new_model``: a predict function no other test passed
  (the attack programs are traced and compiled here, whatever ran before in this process)."""
  import jax  # pylint: disable=g-import-not-at-top
  from mtajax import robust  # pylint: disable=g-import-not-at-top
  predict, params, batches, tasks = problem()
  if new_model:
    predict = lambda state, x, apply=predict: apply(state, x)  # pylint: disable=unnecessary-lambda-assignment
  kwargs = {"suite": "smoke", **kwargs}
  return robust.evaluate(predict, params, batches, tasks, eps=8.0, bounds=(-128.0, 128.0),
                         key=jax.random.key(1), **kwargs)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
  path = tmp_path_factory.mktemp("robust") / "images.jsonl"
  return run(records=path, new_model=True), path


def test_one_call_on_a_plain_jax_model(result):
  from mtajax import evaluate as evaluate_lib  # pylint: disable=g-import-not-at-top
  r, _ = result
  predict, params, batches, tasks = problem()
  want = evaluate_lib.evaluate(predict, params, batches, tasks).metrics  # independent path
  for t in want:
    for m in want[t]:
      assert r.clean[t][m] == pytest.approx(want[t][m], rel=1e-5, abs=1e-6), (t, m)
  assert r.arp > 5  # the attacks did their job
  assert all(np.isfinite(v) for ms in r.worst_case.values() for v in ms.values())


def test_worst_case_is_never_below_any_candidate_and_envelope_above_joint(result):
  r, _ = result
  assert set(r.candidate_arp) == {"clean", "apgd:gbmta", "apgd:total"}
  assert r.candidate_arp["clean"] == 0
  assert all(r.arp >= v for v in r.candidate_arp.values())
  assert sum(r.wins.values()) == N
  for t, v in r.envelope.items():
    assert v >= r.arp_per_task[t] - 1e-9


def test_cost_and_per_image_records(result):
  r, path = result
  # Clean forward + 2 candidates x (2 steps x (forward + backward) + last + scoring forward).
  assert r.passes_per_image == 1 + 2 * (2 * 2 + 1 + 1)
  assert 0 < r.compile_seconds < r.seconds  # a new model: traced and compiled, then run
  assert r.seconds > 0
  rows = [json.loads(line) for line in path.read_text().splitlines()]
  assert len(rows) == 3 * N and rows == r.images
  chosen = [row for row in rows if row["chosen"]]
  assert sorted(row["image"] for row in chosen) == list(range(N))
  for row in rows:
    want = np.mean([row[f"drop/{t}"] for t in ("segment_semantic", "normal", "depth_zbuffer")])
    assert row["s"] == pytest.approx(want, rel=1e-5, abs=1e-5)
    assert "normal/Angle Median" in row


def test_threshold_stops_attacking_images_that_passed(result):
  r, _ = result
  first = sorted((row for row in r.images if row["candidate"] == "apgd:gbmta"),
                 key=lambda row: row["image"])
  threshold = float(np.median([row["s"] for row in first]))
  t = run(threshold=threshold)
  passed = {row["image"] for row in first if row["s"] >= threshold}
  assert 0 < len(passed) < N
  later = {row["image"] for row in t.images if row["candidate"] == "apgd:total"}
  assert later == set(range(N)) - passed
  assert t.passes_per_image < r.passes_per_image
  assert t.candidate_arp["apgd:total"] is None  # it did not run alone on every image
  assert t.arp >= t.candidate_arp["apgd:gbmta"]
  # The trajectory's passes count the padded chunks of the images still under attack (B = 4).
  padded = -(-(N - len(passed)) // B) * B
  last = 7 + padded * 6 / N  # the polished search spends no passes
  assert [p["passes_per_image"] for p in t.trajectory] == [1, 7, last, last]
  assert t.trajectory[-1]["passes_per_image"] == t.passes_per_image
  assert t.trajectory[-1]["arp"] == t.arp
  later_steps = [row["best_step"] == 2 for row in t.images if row["candidate"] == "apgd:total"]
  assert t.at_last_step["apgd:total"] == pytest.approx(np.mean(later_steps))


def test_trajectory_at_last_step_and_converged_flag(result):
  from mtajax import robust  # pylint: disable=g-import-not-at-top
  r, _ = result
  assert r.suite == "smoke"
  # Clean pass, then 2 candidates of 2 (fwd + bwd) steps + APGD's last forward + scoring forward.
  assert r.trajectory == [
      {"candidate": "clean", "passes_per_image": 1.0, "arp": 0.0},
      {"candidate": "apgd:gbmta", "passes_per_image": 7.0, "arp": r.trajectory[1]["arp"]},
      {"candidate": "apgd:total", "passes_per_image": 13.0, "arp": r.trajectory[2]["arp"]},
      {"candidate": robust.POLISH, "passes_per_image": 13.0, "arp": r.arp}]
  assert r.trajectory[1]["arp"] <= r.trajectory[2]["arp"] <= r.arp
  assert r.trajectory[-1]["passes_per_image"] == r.passes_per_image
  assert r.candidate_arp["apgd:gbmta"] <= r.trajectory[1]["arp"] <= r.arp
  for name in ("apgd:gbmta", "apgd:total"):  # the last of 2 APGD iterates: best_step 2
    steps = [row["best_step"] for row in r.images if row["candidate"] == name]
    assert set(steps) <= {0, 1, 2}
    assert r.at_last_step[name] == pytest.approx(np.mean(np.equal(steps, 2)))
  assert r.converged == (robust.convergence(r.trajectory, r.at_last_step, r.wins) is None)


def _point(candidate, passes, arp):
  return {"candidate": candidate, "passes_per_image": passes, "arp": arp}


@pytest.mark.parametrize("trajectory, at_last_step, wins, match", [
    # The last candidate holds 40 of 100 passes: over the last 25 % the ARP rose 0.5 points.
    ([_point("clean", 1, 0), _point("a", 60, 30), _point("b", 100, 30.5)], {}, {}, "by 0.50"),
    ([_point("clean", 1, 0), _point("a", 60, 30), _point("b", 100, 30.09)], {}, {}, None),
    # The polished search spends no attack passes: its jump is not the attacks' gain.
    ([_point("clean", 1, 0), _point("a", 60, 30), _point("b", 100, 30.09),
      _point("polished search", 100, 32)], {}, {}, None),
    # Cut at 75 of 100 passes: "b" (76) straddles it and counts whole, so 30 -> 30.2 is the gain.
    ([_point("clean", 1, 0), _point("a", 50, 30), _point("b", 76, 30.2), _point("c", 100, 30.2)],
     {}, {}, "by 0.20"),
    # "a" wins images and returned its last iterate on 30 % of its images (>= 20 %).
    ([_point("clean", 1, 0), _point("a", 60, 30), _point("b", 100, 30)],
     {"a": 0.3, "b": 0.1}, {"a": 5, "b": 3}, "a .worst case of 5 images.* 30%"),
    # ... which does not count for a candidate that wins nothing, nor for a last-iterate attack.
    ([_point("clean", 1, 0), _point("a", 60, 30), _point("b", 100, 30)],
     {"a": 0.3, "b": None}, {"a": 0, "b": 8}, None),
])
def test_convergence_rule_on_hand_made_trajectories(trajectory, at_last_step, wins, match):
  from mtajax import robust  # pylint: disable=g-import-not-at-top
  why = robust.convergence(trajectory, at_last_step, wins)
  if match is None:
    assert why is None
  else:
    assert why is not None and "\n" not in why
    assert __import__("re").search(match, why), why


@pytest.mark.parametrize("restart_gain, match", [
    (0.3, "second half of the members' restarts raised the robust ARP by 0.30"),
    (0.05, None), (None, None)])  # None: not measured (no member has two restarts; old records)
def test_convergence_rule_on_the_restarts_gain(restart_gain, match):
  from mtajax import robust  # pylint: disable=g-import-not-at-top
  flat = [_point("clean", 1, 0), _point("a", 60, 30), _point("b", 100, 30)]
  why = robust.convergence(flat, {}, {}, restart_gain)
  assert why is None if match is None else match in why


def test_restart_gain_is_the_second_half_of_the_restarts_worst_case_gain():
  import jax  # pylint: disable=g-import-not-at-top
  from mtajax import robust  # pylint: disable=g-import-not-at-top
  from mtajax import worst_case  # pylint: disable=g-import-not-at-top
  predict, params, batches, tasks = problem()
  suite = (("apgd", "gbmta", {**robust.APGD_AA, "num_steps": 2, "restarts": 3}),
           ("fgsm", "total", {}))
  raw = robust.attack_all(predict, params, batches, tasks, eps=8.0, bounds=(-128.0, 128.0),
                          suite=suite, key=jax.random.key(3))
  ev = robust.summarise(raw)
  # Independently: the first half of 3 restarts, rounded up, is 2; FGSM's one run counts whole.
  rows = [0] + [i for i, n in enumerate(raw.names)
                if n in ("apgd:gbmta#0", "apgd:gbmta#1", "fgsm:total")]
  assert len(rows) == 4
  assert [c + 1 for c in robust.first_restarts(raw.candidates, 1, 2)] == rows[1:]
  states = {t: {k: v[rows] for k, v in leaves.items()} for t, leaves in raw.states.items()}
  args = (tasks, states, raw.groups, raw.scores[rows], raw.available[rows],
          worst_case.arp_objective(tasks, raw.clean))
  first = worst_case.polish(*args, worst_case.select(*args)).value[0]
  assert ev.restart_gain == pytest.approx(ev.arp - first)
  assert ev.arp > first > 0  # the third restart found more on these images
  assert ev.converged == (robust.convergence(ev.trajectory, ev.at_last_step, ev.wins,
                                             ev.restart_gain) is None)
  assert robust.summarise(raw, only=[rows[-1]]).restart_gain is None  # one run: nothing to halve


def test_thorough_suite_spends_ten_times_the_passes_of_standard():
  from mtajax import robust  # pylint: disable=g-import-not-at-top
  names = ["segment_semantic", "normal", "depth_zbuffer"]

  def passes(suite):
    return 1 + sum(c.passes(len(names)) for c in robust.candidates(suite, names))
  # Independently: APGD costs 2 passes a step (every direction here: one backward) + 2 forwards.
  # fast: at 20 steps GB-MTA x2 restarts, SegPGD, Total, 3 Single; at 50 GB-MTA with the default,
  # SegPGD, JS, CosPGD losses; at 100 with SegPGD, JS, CosPGD, JS/relative. standard: the same with
  # 6x the steps and 2x the restarts; thorough: standard's with 4x the steps and 3x the restarts;
  # quick: the 20-step ones.
  apgd = lambda steps: steps * 2 + 2
  assert passes("fast") == 1 + 7 * apgd(20) + 4 * apgd(50) + 4 * apgd(100)
  assert passes("standard") == 1 + 2 * (7 * apgd(120) + 4 * apgd(300) + 4 * apgd(600))
  assert passes("thorough") == 1 + 6 * (7 * apgd(480) + 4 * apgd(1200) + 4 * apgd(2400))
  assert passes("thorough") >= 10 * passes("standard")
  assert passes("quick") == 1 + 7 * apgd(20)
  doubled = robust.scaled_suite("standard", 2)
  assert passes(doubled) == 1 + 4 * (7 * apgd(240) + 4 * apgd(600) + 4 * apgd(1200))
  for suite in ("fast", "standard", "thorough"):
    losses = {dict(o).get("attack_loss", "default") for _, _, o in robust.SUITES[suite]}
    assert losses == {"default", "segpgd", "js", "cospgd", "js_relative"}


@pytest.mark.parametrize("kwargs, match", [
    ({"suite": [("apgd", "nope", {})]}, "suite member.*unknown direction"),
    ({"suite": [("bim", "total", {})]}, "suite member.*unknown attack"),
    ({"suite": "strongest"}, "unknown suite.*register_suite"),
    ({"suite": [("pgd", "total", {"attack_loss": {"edges": "js"}})]},
     r"suite member.*attack_loss names unknown tasks \['edges'\]; the tasks are"),
    ({"suite": [("pgd", "total", {"attack_loss": {"normal": "nope"}})]},
     "suite member.*unknown attack loss 'nope'"),
    ({"eps": -1.0}, "eps must be >= 0"),
    ({"chunk": 0}, "chunk must be a number of images >= 1"),
    ({"batches": []}, "no batches"),
    ({"tasks": "custom"}, "no per-image metric.*register"),
])
def test_bad_input_is_one_line_naming_the_fix(kwargs, match):
  import jax  # pylint: disable=g-import-not-at-top
  from mtajax import robust  # pylint: disable=g-import-not-at-top
  from mtajax import tasks as mt  # pylint: disable=g-import-not-at-top
  predict, params, batches, tasks = problem()

  class Custom(mt.Task):
    metrics = {"x": True}
    valid = pixel_loss = metric_init = metric_update = metric_compute = None
  args = {"batches": batches, "tasks": tasks, "eps": 8.0, "suite": "smoke", **kwargs}
  if args["tasks"] == "custom":
    args["tasks"] = (*tasks, Custom(name="custom", channels=1))
  with pytest.raises(ValueError, match=match) as e:
    robust.evaluate(predict, params, args.pop("batches"), args.pop("tasks"),
                    bounds=(-128.0, 128.0), key=jax.random.key(0), **args)
  assert "\n" not in str(e.value)


def test_members_give_each_task_its_own_attack_loss():
  """A member's ``attack_loss`` dict: hashable per-task pairs and a label naming them."""
  from mtajax import robust  # pylint: disable=g-import-not-at-top
  member = ("fgsm", "total", {"attack_loss": {"depth_zbuffer": "relative", "normal": "segpgd"}})
  (cand,) = robust.candidates([member], ["segment_semantic", "normal", "depth_zbuffer"])
  assert cand.program.attack_loss == (("normal", "segpgd"), ("depth_zbuffer", "relative"))
  assert cand.name == "fgsm:total:normal=segpgd+depth_zbuffer=relative"
  assert hash(cand.program) == hash(robust.candidates([member], ["segment_semantic", "normal",
                                                                 "depth_zbuffer"])[0].program)


def _worker() -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from mtajax import parallel  # pylint: disable=g-import-not-at-top
  assert jax.device_count() == 8
  one = run(mesh=parallel.make_mesh(1))
  eight = run(mesh=parallel.make_mesh())
  return {k: [getattr(one, k), getattr(eight, k)] for k in ("arp", "envelope", "wins", "clean")} | {
      "s": [[row["s"] for row in one.images], [row["s"] for row in eight.images]]}


def test_equal_results_on_1_and_8_devices(tmp_path):
  env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
         "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8"}
  proc = subprocess.run([sys.executable, __file__], env=env, cwd=ROOT, capture_output=True,
                        text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  one, eight = out["arp"]
  assert one > 5 and eight == pytest.approx(one, abs=1e-3)
  assert out["wins"][0] == out["wins"][1]
  np.testing.assert_allclose(out["s"][1], out["s"][0], rtol=1e-4, atol=1e-4)
  for t, v in out["envelope"][0].items():
    assert out["envelope"][1][t] == pytest.approx(v, abs=1e-3)


if __name__ == "__main__":
  import mtajax  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  print(json.dumps(_worker()))


def test_readme_robust_example_runs(tmp_path, monkeypatch, capsys):
  import re  # pylint: disable=g-import-not-at-top
  text = (ROOT / "README.md").read_text()
  code = re.search(r"<!-- readme-robust-example -->\s*```python\n(.*?)```", text, re.S).group(1)
  monkeypatch.chdir(tmp_path)
  exec(compile(code, "README robust example", "exec"), {})  # pylint: disable=exec-used
  out = capsys.readouterr().out
  arp = float(re.search(r"robust ARP (-?[0-9.]+)", out).group(1))
  assert arp > 0
  rows = [json.loads(line) for line in (tmp_path / "robust_images.jsonl").read_text().splitlines()]
  assert len(rows) == 3 * 8


def test_padding_examples_of_the_loader_are_left_out(result):
  import jax  # pylint: disable=g-import-not-at-top
  from mtajax import robust  # pylint: disable=g-import-not-at-top
  r, _ = result
  predict, params, batches, tasks = problem()
  padded = []
  for b in batches:  # each batch grows by two blank weight-0 examples
    b = {k: np.concatenate([v, np.zeros((2,) + v.shape[1:], v.dtype)]) for k, v in b.items()}
    b["example_weight"] = np.array([1.0] * B + [0.0, 0.0], np.float32)
    padded.append(b)
  got = robust.evaluate(predict, params, padded, tasks, eps=8.0, bounds=(-128.0, 128.0),
                        suite="smoke", key=jax.random.key(1))
  assert got.clean == r.clean
  assert len(got.images) == len(r.images)


def test_a_sub_suite_of_one_run_equals_its_own_evaluation():
  """attack_all once, then summarise any sub-suite: the numbers of evaluating that sub-suite."""
  import jax  # pylint: disable=g-import-not-at-top
  from mtajax import robust  # pylint: disable=g-import-not-at-top
  predict, params, batches, tasks = problem()
  sub = (("apgd", "total", {**robust.APGD_AA, "num_steps": 2, "restarts": 2}),)
  pool = robust.SUITES["smoke"] + sub
  raw = robust.attack_all(predict, params, batches, tasks, eps=8.0, bounds=(-128.0, 128.0),
                          suite=pool, key=jax.random.key(1))
  rows = raw.members(sub)
  assert len(rows) == 2 and len(raw.candidates) == 4
  got = robust.summarise(raw, only=rows)
  want = run(suite=sub)
  assert got.arp == want.arp and got.envelope == want.envelope
  assert got.passes_per_image == want.passes_per_image
  assert [p["arp"] for p in got.trajectory] == [p["arp"] for p in want.trajectory]
  assert list(got.candidate_arp.values()) == list(want.candidate_arp.values())
  assert got.arp > 0  # the attacks moved the metrics
  whole = robust.summarise(raw)
  assert whole.arp >= got.arp  # more candidates never lower the worst case
  with pytest.raises(ValueError, match="did not run"):
    raw.members((("apgd", "gbmta", {**robust.APGD_AA, "num_steps": 3}),))


def test_the_chunk_size_changes_how_many_images_run_at_once_not_the_results():
  """Per-image attacks (GB-MTA's per-image losses, AutoAttack's per-sample APGD) without a random
  start give each image, in one chunk of all images, the result it gets in the batches' chunks
  (to float rounding)."""
  import jax  # pylint: disable=g-import-not-at-top
  from mtajax import robust  # pylint: disable=g-import-not-at-top
  predict, params, batches, tasks = problem()
  suite = (("apgd", "gbmta", {"variant": "autoattack", "random_start": False, "num_steps": 4}),
           ("pgd", "gbmta", {"num_steps": 2}))
  kwargs = dict(eps=8.0, bounds=(-128.0, 128.0), suite=suite, key=jax.random.key(1))
  by_batch = robust.attack_all(predict, params, batches, tasks, **kwargs)
  at_once = robust.attack_all(predict, params, batches, tasks, chunk=100, **kwargs)
  assert (by_batch.chunk, at_once.chunk) == (B, N)  # at most the number of images
  np.testing.assert_allclose(at_once.scores, by_batch.scores, rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(at_once.best_step, by_batch.best_step)
  assert by_batch.scores[1:].min() > 0  # the attacks moved every image
  assert at_once.seconds.shape == (3,) and np.all(at_once.seconds > 0)
  assert robust.summarise(at_once).arp == pytest.approx(robust.summarise(by_batch).arp, abs=0.02)


def test_a_loss_that_does_not_fit_a_task_fails_before_any_attack(monkeypatch):
  import jax  # pylint: disable=g-import-not-at-top
  from mtajax import robust  # pylint: disable=g-import-not-at-top
  predict, params, batches, tasks = problem()
  monkeypatch.setattr(robust, "_chunks", lambda *a: pytest.fail("attacked before checking"))
  suite = robust.SUITES["smoke"] + (("apgd", "gbmta", {"num_steps": 2, "attack_loss": "relative"}),)
  with pytest.raises(ValueError, match=r"apgd:gbmta:relative: attack loss 'relative' supports "
                                       r"Normal, L1Task tasks, not 'segment_semantic'"):
    robust.attack_all(predict, params, batches, tasks, eps=8.0, bounds=(-128.0, 128.0),
                      suite=suite, key=jax.random.key(0))
