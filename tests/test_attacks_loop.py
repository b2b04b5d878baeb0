"""mtajax.attacks.loop: the Python loop equals the scan loops, every piece compiles once per shape,
one evaluation program serves every phase and attack that evaluates the same thing (counted through
JAX's public compile events), and the loop serves the attacked and the robust evaluation."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtajax import attacks
from mtajax import directions as D
from mtajax import evaluate as E
from mtajax import platform
from mtajax import robust
from mtajax import tasks as mt

import fixtures

def problem():
  predict, params, batches, tasks = fixtures.problem()
  batch = {k: jnp.asarray(v) for k, v in batches[0].items()}
  return predict, params, batch, tasks


@pytest.mark.parametrize("variant", ["reference", "autoattack"])
def test_apgd_traces_its_direction_once_for_both_phases(variant):
  predict, params, batch, tasks = problem()
  traces = []

  @dataclasses.dataclass(frozen=True)
  class Counted(D.Total):
    def __call__(self, loss_fn, x, labels):
      traces.append(1)
      return super().__call__(loss_fn, x, labels)

  loss_fn = mt.make_loss_fn(functools.partial(predict, params), tasks, "pooled")
  kw = dict(eps=8.0, bounds=(-128.0, 128.0), num_steps=4, variant=variant)
  got = attacks.apgd(loss_fn, batch["image"], batch, direction=Counted(), loop="python", **kw)
  assert len(traces) == 1  # the start point and the loop step share one evaluation program
  want = attacks.apgd(loss_fn, batch["image"], batch, direction=D.total(), loop="unrolled", **kw)
  assert np.mean(np.asarray(got.x_adv) != np.asarray(want.x_adv)) < 1e-3
  assert float(jnp.max(jnp.abs(got.x_adv - batch["image"]))) > 0  # it attacked


@pytest.mark.parametrize("attack,direction,options", [
    ("pgd", "gbmta", {"return_best": True}), ("apgd", "sign_total", {}), ("apgd", "gbmta", {}),
    ("apgd", "gbmta", {"variant": "autoattack"}), ("auto_sage", "gbmta", {}),
    ("auto_sage", "total", {"lookahead": "last_task"}),  # the Python loop once failed here
    ("early_stopped_pgd", "total", {"tau": 1})])
def test_python_loop_equals_the_unrolled_and_the_rolled_scan(attack, direction, options):
  predict, params, batch, tasks = problem()
  d = D.by_name(direction)
  loss_fn = mt.make_loss_fn(functools.partial(predict, params), tasks, d.reduction)
  kw = dict(direction=d, eps=8.0, bounds=(-128.0, 128.0), num_steps=4, **options)
  x = batch["image"]
  fn = attacks.by_name(attack)
  want = fn(loss_fn, x, batch, loop="unrolled", **kw)
  rolled = fn(loss_fn, x, batch, loop="rolled", **kw)
  got = fn(loss_fn, x, batch, loop="python", **kw)
  for other in (got, rolled):
    assert np.mean(np.asarray(other.x_adv) != np.asarray(want.x_adv)) < 1e-3  # rare sign flips
    np.testing.assert_allclose(other.objective, want.objective, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(other.best_step, want.best_step)
    for t in want.losses:
      np.testing.assert_allclose(other.losses[t], want.losses[t], rtol=1e-4, atol=1e-6)
  assert float(jnp.max(jnp.abs(got.x_adv - x))) > 0  # it attacked
  assert float(jnp.max(jnp.abs(got.x_adv - x))) <= 8.0 + 1e-4  # within the ball
  assert got.objective[-1].mean() > got.objective[0].mean()  # the objective rose


def test_attacks_share_the_evaluation_program_and_compile_once_per_shape():
  predict, params, batch, tasks = problem()
  traces = {"ascent": 0, "losses": 0}

  @dataclasses.dataclass(frozen=True)
  class Counted(D.GBMTA):
    def __call__(self, loss_fn, x, labels):
      traces["ascent"] += 1
      return super().__call__(loss_fn, x, labels)

    def losses(self, loss_fn, x, labels):
      traces["losses"] += 1
      return super().losses(loss_fn, x, labels)

  d = Counted()
  x = batch["image"]

  def loss_fn():  # rebuilt per call, as the evaluations do per batch
    return mt.make_loss_fn(functools.partial(predict, params), tasks, d.reduction)

  kw = dict(direction=d, bounds=(-128.0, 128.0), loop="python")
  attacks.pgd(loss_fn(), x, batch, eps=8.0, num_steps=3, return_best=True, **kw)
  assert traces == {"ascent": 1, "losses": 1}
  # APGD (both variants, other step counts) evaluates the same things: no new evaluation program.
  attacks.apgd(loss_fn(), x, batch, eps=8.0, num_steps=4, **kw)
  attacks.apgd(loss_fn(), x, batch, eps=8.0, num_steps=5, variant="autoattack", **kw)
  assert traces == {"ascent": 1, "losses": 1}
  with fixtures.traced_programs() as again:  # other ε and a rebuilt loss: no program at all
    attacks.apgd(loss_fn(), x, batch, eps=4.0, num_steps=4, **kw)
    attacks.pgd(loss_fn(), x, batch, eps=2.0, num_steps=3, return_best=True, **kw)
  assert not again


def test_evaluation_and_robust_evaluation_with_the_python_loop():
  predict, params, batches, tasks = fixtures.problem()
  names = ("single_normal", "total", "gbmta")
  spec = attacks.Attack("pgd", E.Switched(tuple(D.by_name(n) for n in names)), 3)
  evs = {loop: [E.evaluate(predict, params, batches, tasks, spec=spec, eps=8.0,
                           bounds=(-128.0, 128.0), direction_index=i, loop=loop)
                for i in range(len(names))] for loop in ("unrolled", "python")}
  clean = E.evaluate(predict, params, batches, tasks)
  for a, b in zip(evs["unrolled"], evs["python"]):
    for t in a.losses:
      np.testing.assert_allclose(b.losses[t], a.losses[t], rtol=1e-4)
  assert evs["python"][0].losses["normal"] > clean.losses["normal"]  # Single-Norm raised its loss
  kw = dict(eps=8.0, bounds=(-128.0, 128.0), key=jax.random.key(1), suite="smoke")
  want = robust.evaluate(predict, params, batches, tasks, loop="unrolled", **kw)
  got = robust.evaluate(predict, params, batches, tasks, loop="python", **kw)
  old = robust.evaluate(predict, params, batches, tasks, unroll="host", **kw)  # older spelling
  np.testing.assert_allclose(got.arp, want.arp, rtol=1e-4, atol=1e-4)
  assert old.arp == got.arp
  assert got.arp >= max(v for v in got.candidate_arp.values() if v is not None) - 1e-6


def test_attack_batch_runs_the_evaluation_programs():
  predict, params, batches, tasks = fixtures.problem()
  spec = attacks.Attack("pgd", E.switched([D.total(), D.gbmta()]), 3)
  kw = dict(spec=spec, eps=8.0, bounds=(-128.0, 128.0), direction_index=1, loop="python")
  ev = E.evaluate(predict, params, batches[:1], tasks, **kw)
  with fixtures.traced_programs() as traced:
    x_adv = E.attack_batch(predict, params, batches[0], tasks, **kw)
  assert not traced  # the examples reuse the evaluation's programs
  step = np.abs(np.asarray(x_adv) - batches[0]["image"])
  assert 0 < step.max() <= 8.0 + 1e-4  # attacked, within the ε-ball
  attacked = E.evaluate(predict, params, [{**batches[0], "image": np.asarray(x_adv)}], tasks)
  for t in ev.losses:
    np.testing.assert_allclose(attacked.losses[t], ev.losses[t], rtol=1e-5)


def test_python_loop_inside_a_trace_runs_the_scan():
  predict, params, batch, tasks = problem()
  loss_fn = mt.make_loss_fn(functools.partial(predict, params), tasks, "pooled")
  kw = dict(direction=D.total(), bounds=(-128.0, 128.0), num_steps=3)
  eager = attacks.pgd(loss_fn, batch["image"], batch, eps=8.0, loop="rolled", **kw).x_adv
  traced = jax.jit(lambda x, e: attacks.pgd(loss_fn, x, batch, eps=e, loop="python", **kw).x_adv)
  np.testing.assert_allclose(traced(batch["image"], 8.0), eager, atol=1e-4)


def test_bad_loop_and_unroll_name_the_fix():
  loss = lambda x, y: {"a": jnp.sum(x ** 2, axis=(1, 2, 3))}  # pylint: disable=unnecessary-lambda-assignment
  kw = dict(direction=D.total(), eps=1.0, bounds=(-1.0, 1.0))
  x = jnp.zeros((2, 4, 4, 3))
  with pytest.raises(ValueError, match="loop must be one of unrolled, rolled, python"):
    attacks.pgd(loss, x, None, loop="fast", **kw)
  with pytest.raises(ValueError, match="unroll must be True, an int >= 1 or 'host'.*loop="):
    attacks.pgd(loss, x, None, unroll="fast", **kw)
  with pytest.raises(ValueError, match="not both"):
    attacks.pgd(loss, x, None, unroll=1, loop="python", **kw)


@pytest.mark.parametrize("variable,chosen,default", [
    ("MTAJAX_DEFAULT_LOOP", platform.default_loop, "unrolled"),
    ("MTAJAX_ATTACK_LOOP", platform.evaluation_loop, "python")])
def test_loop_variables_choose_the_default_loops(monkeypatch, variable, chosen, default):
  monkeypatch.delenv(variable, raising=False)
  assert chosen() == default  # XLA:CPU, one process
  for loop in ("unrolled", "rolled", "python"):
    monkeypatch.setenv(variable, loop)
    assert chosen() == loop
  monkeypatch.setenv(variable, "fast")
  with pytest.raises(ValueError,
                     match=f"^{variable} must be unrolled, rolled or python; got 'fast'"):
    chosen()


def test_robust_one_program_serves_single_total_gbmta_with_equal_results():
  predict, params, batches, tasks = fixtures.problem()
  suite = [("apgd", "gbmta", {**robust.APGD_AA, "num_steps": 3, "restarts": 2}),
           ("apgd", "total", {**robust.APGD_AA, "num_steps": 3}),
           ("apgd", "single", {**robust.APGD_AA, "num_steps": 3}),
           ("apgd", "gbmta", {**robust.APGD_AA, "num_steps": 3, "attack_loss": "segpgd"})]
  names = [t.name for t in tasks]
  own = robust.candidates(suite, names)
  one = robust.candidates(suite, names, one_program=True)
  assert [c.name for c in one] == [c.name for c in own]
  assert len({c.program for c in own}) == 6 and len({c.program for c in one}) == 2
  assert [c.passes(3) for c in one] == [c.passes(3) for c in own]
  assert all(isinstance(c.program.direction, E.Switched) == (":segpgd" not in c.name)
             for c in one)
  kw = dict(eps=8.0, bounds=(-128.0, 128.0), key=jax.random.key(1), suite=suite, loop="python")
  want = robust.evaluate(predict, params, batches, tasks, **kw)
  got = robust.evaluate(predict, params, batches, tasks, one_program=True, **kw)
  np.testing.assert_allclose(got.arp, want.arp, atol=0.05)
  for name, v in want.candidate_arp.items():
    np.testing.assert_allclose(got.candidate_arp[name], v, atol=0.05, err_msg=name)
  assert got.passes_per_image == want.passes_per_image


def test_losses_that_do_not_read_the_step_count_share_their_programs_across_step_counts():
  """JS (the clean prediction, no step count) attacks at 4 and 6 steps share the forward +
  backward program and give the result of the same loss registered as reading the step count;
  SegPGD (λ = step / 2N) and a loss registered without ``reads_steps=False`` see a static int."""
  predict, params, batch, tasks = problem()
  d = D.gbmta()
  x = batch["image"]
  kw = dict(direction=d, eps=8.0, bounds=(-128.0, 128.0), loop="python")

  def loss_fn(name):
    return mt.make_loss_fn(functools.partial(predict, params), tasks, d.reduction, name)

  def traced_programs(name, num_steps):
    with fixtures.traced_programs() as traced:
      result = attacks.apgd(loss_fn(name), x, batch, num_steps=num_steps, **kw)
    return result, traced

  attacks.apgd(loss_fn("js"), x, batch, num_steps=4, **kw)
  got, traced = traced_programs("js", 6)
  assert "_evaluate" not in traced, traced  # the forward + backward programs are shared
  attacks.apgd(loss_fn("segpgd"), x, batch, num_steps=4, **kw)
  _, traced = traced_programs("segpgd", 6)
  assert "_evaluate" in traced  # SegPGD's λ needs the step count: a program per count
  seen = []

  def own(task, pred, labels, context):
    seen.append(context.num_steps)
    return mt.attack_losses.get("js")(task, pred, labels, context)

  mt.attack_losses.register("own_js", own)
  try:
    assert loss_fn("own_js").reads_steps and not loss_fn("js").reads_steps
    assert loss_fn("segpgd").reads_steps and not loss_fn("default").reads_steps
    want = attacks.apgd(loss_fn("own_js"), x, batch, num_steps=6, **kw)
  finally:
    mt.attack_losses._REGISTRY.pop("own_js")  # pylint: disable=protected-access
  assert seen and all(v == 6 and isinstance(v, int) for v in seen)  # static, as documented
  np.testing.assert_array_equal(got.x_adv, want.x_adv)
  np.testing.assert_array_equal(got.objective, want.objective)
  assert float(jnp.max(jnp.abs(got.x_adv - x))) > 0  # it attacked
  assert got.objective[-1].mean() > got.objective[0].mean()  # the objective rose
