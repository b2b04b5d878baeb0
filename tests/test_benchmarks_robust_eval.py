"""benchmarks/robust_eval.py --convergence's measurement on the plain-JAX toy model, with one-step
suites standing in for standard / thorough (the real measurement is the lead's, on trained models)."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest

from fixtures import problem

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _benchmark():
  spec = importlib.util.spec_from_file_location("robust_eval", ROOT / "benchmarks/robust_eval.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


def test_convergence_mode_measures_each_suite_apart():
  import jax  # pylint: disable=g-import-not-at-top
  from mtajax import robust  # pylint: disable=g-import-not-at-top
  bench = _benchmark()
  predict, params, batches, tasks = problem()
  light = [("fgsm", "total", {})]
  reference = [("fgsm", "total", {}), ("fgsm", "gbmta", {})]
  suites = [("light", light), ("reference", reference),
            ("reference x2", robust.scaled_suite(reference, 2))]
  rows = bench.measure_suites(predict, params, lambda: batches, tasks, eps=8.0, suites=suites,
                              key=jax.random.key(0))
  assert [m.label for m in rows] == ["light", "reference", "reference x2"]
  # FGSM: one forward + backward, then the scoring forward; x2 doubles the restarts (2 each).
  assert [m.result.passes_per_image for m in rows] == [1 + 3, 1 + 2 * 3, 1 + 4 * 3]
  assert rows[0].compile_s > 0 and all(m.run_s > 0 for m in rows)
  assert rows[2].compile_s < rows[0].compile_s  # its programs were compiled by the first runs
  # The worst case over more candidates (the light one first): never lower.
  assert rows[0].result.arp <= min(rows[1].result.arp, rows[2].result.arp)
  batch = {k: v for k, v in batches[0].items() if k != "example_weight"}
  pass_s = bench.pass_seconds(predict, params, batch, tasks)
  assert 0 < pass_s < 1
  table = bench.convergence_table("toy", 8.0, rows, 8, pass_s).splitlines()
  assert table[0] == "toy ε=8" and len(table) == 5
  ratio = rows[0].run_s / (rows[0].result.passes_per_image * 8 * pass_s)
  assert f"{ratio:10.2f}" in table[2]
  gap = rows[1].result.arp - rows[0].result.arp
  assert f"{gap:+7.2f}" in table[3]
  assert table[4].split()[-1] in ("yes", "NO")
  # What the second half of the restarts added: none in the light suite, the doubled one has two.
  assert table[2].split()[2] == "–" and rows[0].result.restart_gain is None  # no gap column
  assert table[4].split()[4] == f"{rows[2].result.restart_gain:+.2f}"


def test_convergence_suites_are_the_suite_the_reference_and_its_double():
  from mtajax import robust  # pylint: disable=g-import-not-at-top
  labels = _benchmark().convergence_suites("standard", "thorough")
  assert [label for label, _ in labels] == ["standard", "thorough", "thorough x2"]
  _, _, doubled = labels[2][1][0]
  assert doubled["num_steps"] == 960 and doubled["restarts"] == 24
  assert robust.SUITES["thorough"][0][2]["num_steps"] == 480
  with pytest.raises(SystemExit):
    argv, sys.argv = sys.argv, ["robust_eval.py", "--convergence", "--suite", "nope"]
    try:
      _benchmark().main()
    finally:
      sys.argv = argv
