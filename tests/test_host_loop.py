"""mtajax.host_loop: loops run from the host over one compiled step give jax.jit's results, compile
once per shape, and serve the attacks (``unroll='host'``), the attacked and the robust evaluation."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtajax import host_loop

import fixtures

TRACES = []


def loops(x, w, *, n):
  """Nested jit with a loop, a reversed loop with xs, a loop inside a cond, literals, a pytree."""
  TRACES.append(n)

  def body(c, i):
    c = jnp.tanh(c @ w) + 0.1 * i
    return c, (jnp.sum(c), c[0])

  per_step = jax.jit(lambda x_: jax.lax.scan(body, x_, jnp.arange(n, dtype=jnp.float32))[1])(x)
  last, ys = jax.lax.scan(lambda c, xx: (c * 0.5 + xx, c), x[0], x, reverse=True)
  in_cond = jax.lax.cond(jnp.sum(x) > 0, lambda v: jax.lax.scan(lambda c, _: (c + 1.0, c), v,
                                                                 None, length=3)[0],
                         lambda v: v, x[1])
  return {"per_step": per_step, "last": last, "ys": ys, "in_cond": in_cond, "double": 2.0 * x}


def data(seed=0):
  x = jnp.asarray(np.random.default_rng(seed).normal(size=(4, 4)), jnp.float32)
  return x, x.T / 2


def test_equals_jit_and_traces_once_per_shape():
  hosted = host_loop.jit(loops, static_argnames=("n",))
  x, w = data()
  want = jax.jit(loops, static_argnames=("n",))(x, w, n=5)
  TRACES.clear()
  got = hosted(x, w, n=5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), got, want)
  x2, w2 = data(1)  # new values, same shapes: the plan is reused
  got2 = hosted(x2, w2, n=5)
  want2 = jax.jit(loops, static_argnames=("n",))(x2, w2, n=5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), got2, want2)
  assert TRACES == [5], TRACES
  hosted(x, w, n=3)  # another static value: one more trace
  assert TRACES == [5, 3]


def test_one_compiled_step_per_loop_and_equal_segments_shared():
  host_loop.clear()
  x, w = data()

  def f(x_, w_):
    y = jax.lax.scan(lambda c, _: (jnp.tanh(c @ w_), None), x_, None, length=50)[0]
    return jnp.sin(y) * 3.0

  def g(x_, w_):  # another loop body, the same code after it
    y = jax.lax.scan(lambda c, _: (jnp.cos(c @ w_), None), x_, None, length=50)[0]
    return jnp.sin(y) * 3.0

  np.testing.assert_allclose(host_loop.jit(f)(x, w), jax.jit(f)(x, w), rtol=1e-5, atol=1e-6)
  first = len(host_loop._COMPILED)  # pylint: disable=protected-access
  np.testing.assert_allclose(host_loop.jit(g)(x, w), jax.jit(g)(x, w), rtol=1e-5, atol=1e-6)
  # g adds its loop step only: the segment after the loop is f's program.
  assert len(host_loop._COMPILED) == first + 1  # pylint: disable=protected-access
  host_loop.clear()
  assert not host_loop._COMPILED and not host_loop._PLANS  # pylint: disable=protected-access


def test_shared_calls_compile_once_for_every_call_site():
  host_loop.clear()
  traces = []

  def grad(x_, w_):  # stands for an attack direction: the costly part of a step
    traces.append(1)
    return jax.grad(lambda v: jnp.sum(jnp.tanh(v @ w_) ** 2))(x_)

  def attack(x_, w_, *, n):
    g0 = host_loop.shared(grad, "grad")(x_, w_)  # the start point, outside the loop
    body = lambda c, i: (c + 0.1 * jnp.sign(host_loop.shared(grad, "grad")(c, w_)) * i, c[0])  # pylint: disable=unnecessary-lambda-assignment
    y, firsts = jax.lax.scan(body, x_ + 0.1 * g0, jnp.arange(n, dtype=jnp.float32))
    return y, firsts

  x, w = data()
  for n in (4, 7):  # two programs (another loop length), one shared gradient
    want = jax.jit(attack, static_argnames=("n",))(x, w, n=n)
    got = host_loop.jit(attack, static_argnames=("n",))(x, w, n=n)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, want)
  shared = [k for k in host_loop._COMPILED if k.startswith("shared:")]  # pylint: disable=protected-access
  assert len(shared) == 1, shared
  compiled = host_loop._COMPILED[shared[0]]  # pylint: disable=protected-access
  assert compiled._cache_size() == 1  # pylint: disable=protected-access
  host_loop.clear()


def problem():
  predict, params, batches, tasks = fixtures.problem()
  batch = {k: jnp.asarray(v) for k, v in batches[0].items()}
  return predict, params, batch, tasks


@pytest.mark.parametrize("variant", ["reference", "autoattack"])
def test_apgd_traces_its_direction_once_for_both_call_sites(variant):
  import dataclasses  # pylint: disable=g-import-not-at-top
  from mtajax import attacks  # pylint: disable=g-import-not-at-top
  from mtajax import directions as D  # pylint: disable=g-import-not-at-top
  from mtajax import tasks as mt  # pylint: disable=g-import-not-at-top
  predict, params, batch, tasks = problem()
  traces = []

  @dataclasses.dataclass(frozen=True)
  class Counted(D.Total):
    def __call__(self, loss_fn, x, labels):
      traces.append(1)
      return super().__call__(loss_fn, x, labels)

  loss_fn = mt.make_loss_fn(functools.partial(predict, params), tasks, "pooled")
  kw = dict(eps=8.0, bounds=(-128.0, 128.0), num_steps=4, variant=variant)
  got = attacks.apgd(loss_fn, batch["image"], batch, direction=Counted(), unroll="host", **kw)
  assert len(traces) == 1  # the start point and the loop step share one traced program
  want = attacks.apgd(loss_fn, batch["image"], batch, direction=D.total(), unroll=True, **kw)
  assert np.mean(np.asarray(got.x_adv) != np.asarray(want.x_adv)) < 1e-3
  assert float(jnp.max(jnp.abs(got.x_adv - batch["image"]))) > 0  # it attacked


@pytest.mark.parametrize("attack,direction", [("pgd", "gbmta"), ("apgd", "sign_total"),
                                              ("apgd", "gbmta")])
def test_attack_with_host_loop_equals_the_unrolled_attack(attack, direction):
  from mtajax import attacks  # pylint: disable=g-import-not-at-top
  from mtajax import directions as D  # pylint: disable=g-import-not-at-top
  from mtajax import tasks as mt  # pylint: disable=g-import-not-at-top
  predict, params, batch, tasks = problem()
  d = D.by_name(direction)
  loss_fn = mt.make_loss_fn(functools.partial(predict, params), tasks, d.reduction)
  kw = dict(direction=d, eps=8.0, bounds=(-128.0, 128.0), num_steps=4)
  x = batch["image"]
  want = attacks.by_name(attack)(loss_fn, x, batch, unroll=True, **kw)
  got = attacks.by_name(attack)(loss_fn, x, batch, unroll="host", **kw)
  assert np.mean(np.asarray(got.x_adv) != np.asarray(want.x_adv)) < 1e-3  # rare sign flips only
  np.testing.assert_allclose(got.objective, want.objective, rtol=1e-4, atol=1e-6)
  for t in want.losses:
    np.testing.assert_allclose(got.losses[t], want.losses[t], rtol=1e-4, atol=1e-6)
  assert float(jnp.max(jnp.abs(got.x_adv - x))) > 0  # it attacked
  assert float(jnp.max(jnp.abs(got.x_adv - x))) <= 8.0 + 1e-4  # within the ball
  assert got.objective[-1].mean() > got.objective[0].mean()  # the objective rose


def test_evaluation_and_robust_evaluation_with_host_loops():
  import jax  # pylint: disable=g-import-not-at-top,redefined-outer-name,reimported
  from mtajax import directions as D  # pylint: disable=g-import-not-at-top
  from mtajax import evaluate as E  # pylint: disable=g-import-not-at-top
  from mtajax import robust  # pylint: disable=g-import-not-at-top
  predict, params, batches, tasks = fixtures.problem()
  names = ("single_normal", "total", "gbmta")
  evs = {}
  for unroll in (True, "host"):
    spec = E.AttackSpec("pgd", E.Switched(tuple(D.by_name(n) for n in names)), 3,
                        (("unroll", unroll),))
    evs[unroll] = [E.evaluate(predict, params, batches, tasks, spec=spec, eps=8.0,
                              bounds=(-128.0, 128.0), direction_index=i)
                   for i in range(len(names))]
  clean = E.evaluate(predict, params, batches, tasks)
  for a, b in zip(evs[True], evs["host"]):
    for t in a.losses:
      np.testing.assert_allclose(b.losses[t], a.losses[t], rtol=1e-4)
      assert b.losses[t] > clean.losses[t] or t != "normal"  # Single-Norm raised its loss
  kw = dict(eps=8.0, bounds=(-128.0, 128.0), key=jax.random.key(1), suite="smoke")
  want = robust.evaluate(predict, params, batches, tasks, unroll=True, **kw)
  got = robust.evaluate(predict, params, batches, tasks, unroll="host", **kw)
  np.testing.assert_allclose(got.arp, want.arp, rtol=1e-4, atol=1e-4)
  assert got.arp >= max(v for v in got.candidate_arp.values() if v is not None) - 1e-6


def test_attack_batch_runs_the_evaluation_program():
  from mtajax import directions as D  # pylint: disable=g-import-not-at-top
  from mtajax import evaluate as E  # pylint: disable=g-import-not-at-top
  predict, params, batches, tasks = fixtures.problem()
  spec = E.AttackSpec("pgd", E.switched([D.total(), D.gbmta()]), 3, (("unroll", "host"),))
  kw = dict(spec=spec, eps=8.0, bounds=(-128.0, 128.0), direction_index=1)
  ev = E.evaluate(predict, params, batches[:1], tasks, **kw)
  compiled = len(host_loop._COMPILED)  # pylint: disable=protected-access
  x_adv = E.attack_batch(predict, params, batches[0], tasks, **kw)
  assert len(host_loop._COMPILED) == compiled  # pylint: disable=protected-access
  step = np.abs(np.asarray(x_adv) - batches[0]["image"])
  assert 0 < step.max() <= 8.0 + 1e-4  # attacked, within the ε-ball
  attacked = E.evaluate(predict, params, [{**batches[0], "image": np.asarray(x_adv)}], tasks)
  for t in ev.losses:
    np.testing.assert_allclose(attacked.losses[t], ev.losses[t], rtol=1e-5)


def test_bad_unroll_names_the_fix():
  from mtajax import attacks  # pylint: disable=g-import-not-at-top
  from mtajax import directions as D  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="unroll must be .* 'host'"):
    attacks.pgd(lambda x, y: {"a": jnp.sum(x ** 2, axis=(1, 2, 3))}, jnp.zeros((2, 4, 4, 3)),
                None, direction=D.total(), eps=1.0, bounds=(-1.0, 1.0), unroll="fast")


def test_robust_one_program_serves_single_total_gbmta_with_equal_results():
  import jax  # pylint: disable=g-import-not-at-top,redefined-outer-name,reimported
  from mtajax import evaluate as E  # pylint: disable=g-import-not-at-top
  from mtajax import robust  # pylint: disable=g-import-not-at-top
  predict, params, batches, tasks = fixtures.problem()
  suite = [("apgd", "gbmta", {**robust.APGD_AA, "num_steps": 3, "restarts": 2}),
           ("apgd", "total", {**robust.APGD_AA, "num_steps": 3}),
           ("apgd", "single", {**robust.APGD_AA, "num_steps": 3}),
           ("apgd", "gbmta", {**robust.APGD_AA, "num_steps": 3, "attack_loss": "segpgd"})]
  names = [t.name for t in tasks]
  own = robust.candidates(suite, names, unroll="host")
  one = robust.candidates(suite, names, unroll="host", one_program=True)
  assert [c.name for c in one] == [c.name for c in own]
  assert len({c.program for c in own}) == 6 and len({c.program for c in one}) == 2
  assert [c.passes(3) for c in one] == [c.passes(3) for c in own]
  assert all(isinstance(c.program.direction, E.Switched) == (":segpgd" not in c.name)
             for c in one)
  kw = dict(eps=8.0, bounds=(-128.0, 128.0), key=jax.random.key(1), suite=suite, unroll="host")
  want = robust.evaluate(predict, params, batches, tasks, **kw)
  got = robust.evaluate(predict, params, batches, tasks, one_program=True, **kw)
  np.testing.assert_allclose(got.arp, want.arp, atol=0.05)
  for name, v in want.candidate_arp.items():
    np.testing.assert_allclose(got.candidate_arp[name], v, atol=0.05, err_msg=name)
  assert got.passes_per_image == want.passes_per_image
