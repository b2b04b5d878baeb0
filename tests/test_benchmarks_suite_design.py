"""benchmarks/suite_design.py on the plain-JAX toy model: the pool's union and the greedy design."""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
import sys

from fixtures import problem

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _benchmark():
  spec = importlib.util.spec_from_file_location("suite_design", ROOT / "benchmarks/suite_design.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module


def test_union_keeps_each_member_once_with_its_most_restarts():
  bench = _benchmark()
  a = ("apgd", "gbmta", {"num_steps": 2, "restarts": 2})
  b = ("apgd", "gbmta", {"num_steps": 2})
  c = ("apgd", "gbmta", {"num_steps": 2, "attack_loss": "js"})
  assert bench.union([b, a, c]) == (("apgd", "gbmta", {"num_steps": 2, "restarts": 2}),
                                    ("apgd", "gbmta", {"num_steps": 2, "attack_loss": "js",
                                                       "restarts": 1}))


def test_greedy_adds_the_best_gain_per_pass_and_reaches_the_whole_pool():
  import jax  # pylint: disable=g-import-not-at-top
  from mtajax import robust  # pylint: disable=g-import-not-at-top
  bench = _benchmark()
  predict, params, batches, tasks = problem()
  pool = (("fgsm", "total", {}), ("apgd", "gbmta", {**robust.APGD_AA, "num_steps": 2}))
  raw = robust.attack_all(predict, params, batches, tasks, eps=8.0, bounds=(-128.0, 128.0),
                          suite=pool, key=jax.random.key(0))
  steps = bench.greedy({"toy": raw}, 5)
  assert len(steps) == 2  # every candidate once
  values = [v["toy"] for _, _, v in steps]
  assert values[0] > 0 and values[1] >= values[0]
  assert values[-1] == bench.arp_of(raw, [1, 2])
  # The first pick has the larger ARP per pass of the two alone.
  gain = {raw.names[i]: bench.arp_of(raw, [i]) / raw.candidates[i - 1].passes(len(tasks))
          for i in (1, 2)}
  assert steps[0][0] == max(gain, key=gain.get)
  assert steps[-1][1] == 1 + sum(c.passes(len(tasks)) for c in raw.candidates)


def test_merge_of_two_runs_is_one_pool_of_their_candidates():
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import pytest  # pylint: disable=g-import-not-at-top
  from mtajax import robust  # pylint: disable=g-import-not-at-top
  bench = _benchmark()
  predict, params, batches, tasks = problem()
  shared = ("apgd", "gbmta", {**robust.APGD_AA, "num_steps": 2})
  a_suite = (shared, ("fgsm", "total", {}))
  b_suite = (shared, ("apgd", "gbmta", {**robust.APGD_AA, "num_steps": 3}))
  run = lambda suite: robust.attack_all(  # pylint: disable=unnecessary-lambda-assignment
      predict, params, batches, tasks, eps=8.0, bounds=(-128.0, 128.0), suite=suite,
      key=jax.random.key(0))
  a, b = run(a_suite), run(b_suite)
  merged = bench.merge(a, b)
  assert len(merged.candidates) == 3  # the shared member once
  assert len(set(merged.names)) == 4 and merged.scores.shape == (4, len(a.groups))
  got = robust.summarise(merged, only=merged.members(b_suite))
  want = robust.summarise(b)
  assert got.arp == want.arp and got.envelope == want.envelope
  assert robust.summarise(merged).arp >= max(want.arp, robust.summarise(a).arp)
  np.testing.assert_array_equal(merged.seconds[:3], a.seconds)
  with pytest.raises(ValueError, match="one model"):  # other images
    bench.merge(a, dataclasses.replace(b, groups=b.groups + 1))


def test_restart_curve_keeps_the_first_share_of_each_members_restarts():
  import jax  # pylint: disable=g-import-not-at-top
  from mtajax import robust  # pylint: disable=g-import-not-at-top
  bench = _benchmark()
  predict, params, batches, tasks = problem()
  pool = (("apgd", "gbmta", {**robust.APGD_AA, "num_steps": 2, "restarts": 2}),
          ("apgd", "total", {**robust.APGD_AA, "num_steps": 3, "restarts": 4}))
  raw = robust.attack_all(predict, params, batches, tasks, eps=8.0, bounds=(-128.0, 128.0),
                          suite=pool, key=jax.random.key(0))
  curve = bench.restart_curve(raw, 2)
  half = [i for i, n in enumerate(raw.names) if n in ("apgd:gbmta#0", "apgd:total#0",
                                                      "apgd:total#1")]
  assert len(half) == 3

  def passes(rows):
    return 1 + sum(raw.candidates[i - 1].passes(len(tasks)) for i in rows)
  assert curve[0] == (3, passes(half), bench.arp_of(raw, half, polish=True))
  every = list(range(1, 7))
  assert curve[1] == (6, passes(every), bench.arp_of(raw, every, polish=True))
  # The polish never lowers the greedy search's worst case.
  assert curve[1][2] >= bench.arp_of(raw, every) > 0
