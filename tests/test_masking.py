"""The gradient-masking checks: each passes on a plain (linear) toy model and fails on the same
model behind a straight rounding of its input; the rules on given numbers; NaN never passes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtajax import masking
from mtajax import robust

from fixtures import linear, linear_problem, quantised

BOUNDS = (-128.0, 128.0)
# Five-step AutoAttack-form APGD: converged on the linear model (twice the steps and restarts
# gain < 2 ARP points there).
SUITE = (("apgd", "total", {"num_steps": 5, "variant": "autoattack", "random_start": True}),)
EPS = (4.0, 8.0)


def _checks(predict):
  _, params, batches, tasks = linear_problem()
  key = jax.random.key(0)
  common = dict(bounds=BOUNDS, suite=SUITE, key=key)
  at8 = robust.evaluate(predict, params, batches, tasks, eps=8.0, **common)
  return at8, {
      "eps_sweep": masking.eps_sweep(predict, params, batches, tasks, eps=EPS, known={8.0: at8.arp},
                                     **common),
      "transfer": masking.transfer(predict, params, params, batches, tasks, eps=8.0,
                                   source_predict=linear, whitebox_arp=at8.arp, **common),
      "more_steps": masking.more_steps(predict, params, batches, tasks, eps=8.0, base_arp=at8.arp,
                                       tolerance=3.0, **common),
      "gradients": masking.gradients(predict, params, batches, tasks)}


@pytest.fixture(scope="module", name="plain")
def fixture_plain():
  return _checks(linear)


@pytest.fixture(scope="module", name="masked")
def fixture_masked():
  return _checks(quantised)


@pytest.mark.parametrize("name", ["eps_sweep", "transfer", "more_steps", "gradients"])
def test_each_check_passes_on_the_plain_model_and_fails_on_the_masked_one(plain, masked, name):
  ok, bad = plain[1][name], masked[1][name]
  assert ok.name == bad.name == name
  assert ok.passed, ok.reason
  assert not bad.passed, bad.reason
  assert "\n" not in bad.reason and all(np.isfinite(v) for v in bad.numbers.values())


def test_the_numbers_behind_the_verdicts(plain, masked):
  at8, checks = plain
  arps = checks["eps_sweep"].numbers
  assert arps["arp@eps8"] == at8.arp
  assert arps["arp@eps4"] < arps["arp@eps8"] < arps["arp@eps64"] and arps["arp@eps64"] >= 50
  # The twin is the model itself: the transfer attack is the white-box candidate, same random
  # starts (an independent path: robust.evaluate's own candidate ARP).
  assert checks["transfer"].numbers["transfer/apgd:total"] == pytest.approx(
      at8.candidate_arp["apgd:total"], abs=1e-6)
  assert checks["gradients"].numbers["nonzero/segment_semantic"] == 1.0
  masked_at8, masked_checks = masked
  # Rounding: zero input gradients (analytic), so the white-box attack finds ~nothing while the
  # twin's images transfer at full strength.
  assert masked_checks["gradients"].numbers["nonzero/normal"] == 0.0
  assert masked_at8.arp < 10 < 40 < masked_checks["transfer"].numbers["transfer_arp"]
  assert masked_checks["more_steps"].numbers["gain"] > 3.0


def test_verdicts_on_given_numbers():
  ok = masking.eps_verdict({4.0: 10.0, 8.0: 9.5, 64.0: 80.0}, tolerance=1.0)
  assert ok.passed and ok.numbers["arp@eps64"] == 80.0
  falls = masking.eps_verdict({4.0: 10.0, 8.0: 8.0, 64.0: 80.0}, tolerance=1.0)
  assert not falls.passed and "falls from 10.00 at eps 4 to 8.00 at eps 8" in falls.reason
  assert not masking.eps_verdict({4.0: 1.0, 8.0: 2.0, 64.0: 49.0}, broken_arp=50.0).passed
  assert masking.transfer_verdict({"a": 20.5, "b": 3.0}, 20.0, tolerance=1.0).passed
  assert not masking.transfer_verdict({"a": 21.5}, 20.0, tolerance=1.0).passed
  assert masking.more_steps_verdict(20.0, 20.9).numbers["gain"] == pytest.approx(0.9)
  assert not masking.more_steps_verdict(20.0, 21.5, tolerance=1.0).passed


def test_nan_never_passes():
  nan = float("nan")
  assert not masking.eps_verdict({4.0: nan, 8.0: 1.0, 64.0: 90.0}).passed
  assert not masking.transfer_verdict({"a": nan}, 10.0).passed
  assert not masking.transfer_verdict({"a": 1.0}, nan).passed
  assert not masking.more_steps_verdict(10.0, nan).passed
  _, params, batches, tasks = linear_problem()
  nan_grad = lambda p, x: linear(p, jnp.sqrt(x))  # pylint: disable=unnecessary-lambda-assignment
  check = masking.gradients(nan_grad, params, batches, tasks)
  assert not check.passed and "NaN/inf" in check.reason


@pytest.mark.parametrize("call, match", [
    (lambda a: masking.eps_sweep(*a, eps=(8.0,), large_eps=8.0, bounds=BOUNDS,
                                 key=jax.random.key(0)), "large_eps 8 must exceed"),
    (lambda a: masking.more_steps(*a, eps=8.0, bounds=BOUNDS, key=jax.random.key(0), factor=1),
     "factor must be an integer >= 2"),
])
def test_bad_input_is_one_line(call, match):
  predict, params, batches, tasks = linear_problem()
  with pytest.raises(ValueError, match=match) as e:
    call((predict, params, batches, tasks))
  assert "\n" not in str(e.value)
