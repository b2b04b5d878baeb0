"""Every attack by name: properties, one-line errors on bad input, NaN losses, one compile per shape,
and the attacks inside a user's ``jax.jit`` / ``jax.vmap`` (traced and captured inputs give the eager
result; bad traced values give NaN images and a ``checkify`` error, bad concrete ones one line)."""

import functools

from hypothesis import given, settings, strategies as st
import jax
from jax.experimental import checkify
import jax.numpy as jnp
import numpy as np
import pytest

from mtajax import attacks
from mtajax import directions as D
from mtajax import testing



# ----------------------------------------------------------------------------------------------
# Property tests over shapes, ε, bounds and seeds on a cheap nonlinear multi-task loss.

def cheap_loss(x, labels):
  """Normals-style, cross-entropy, L1 and an identically-zero task on a (B, H, W, C) input."""
  m, target = labels
  h = jnp.tanh(x / 50.0) @ m  # (B, H, W, 4)
  n = h[..., :3] / jnp.maximum(jnp.linalg.norm(h[..., :3], axis=-1, keepdims=True), 1e-12)
  return {"normal": 1.0 - jnp.mean(jnp.sum(n * target, -1), axis=(1, 2)),
          "seg": jnp.mean(jax.nn.logsumexp(h, -1) - h[..., 0], axis=(1, 2)),
          "depth": jnp.mean(jnp.abs(h[..., 3] - 0.3), axis=(1, 2)),
          "zero": 0.0 * jnp.mean(x, axis=(1, 2, 3))}


ALL = [("fgsm", d) for d in ("single_normal", "total", "sign_total", "gbmta")]
ALL += [("pgd", d) for d in ("single_normal", "total", "sign_total", "gbmta")]
ALL += [("apgd", d) for d in ("single_normal", "total", "sign_total", "gbmta")]
ALL += [("auto_sage", d) for d in ("total", "gbmta")]


@st.composite
def problems(draw):
  b, hw, c = draw(st.sampled_from([1, 3])), draw(st.sampled_from([2, 5])), 3
  seed = draw(st.integers(0, 2 ** 16))
  eps = draw(st.floats(0.0, 20.0))
  rng = np.random.default_rng(seed)
  low = rng.uniform(-130, -50, c).astype(np.float32)
  high = low + rng.uniform(1, 250, c).astype(np.float32)
  x = rng.uniform(low, high, (b, hw, hw, c)).astype(np.float32)
  m = rng.normal(size=(c, 4)).astype(np.float32)
  target = rng.normal(size=(b, hw, hw, 3)).astype(np.float32)
  target /= np.linalg.norm(target, axis=-1, keepdims=True)
  return x, (m, target), eps, (low, high), seed


@pytest.mark.parametrize("attack,direction", ALL)
@settings(max_examples=3, deadline=None)
@given(problem=problems())
def test_properties(attack, direction, problem):
  x, labels, eps, bounds, seed = problem
  fn = attacks.by_name(attack)
  kwargs = {} if attack == "fgsm" else {"num_steps": 3}
  if attack in ("pgd", "apgd"):
    kwargs.update(random_start=True, key=jax.random.key(seed))
  run = lambda: fn(cheap_loss, x, labels, direction=D.by_name(direction), eps=eps,  # pylint: disable=unnecessary-lambda-assignment
                   bounds=bounds, **kwargs)
  out = run()
  x_adv = np.asarray(out.x_adv)
  assert np.all(np.isfinite(x_adv))
  assert np.max(np.abs(x_adv - x)) <= eps + 1e-6
  assert np.all(x_adv >= bounds[0]) and np.all(x_adv <= bounds[1])
  np.testing.assert_array_equal(np.asarray(run().x_adv), x_adv)  # Same key => same output.
  assert np.all(np.isfinite(out.objective)) or direction == "gbmta"  # c_t = 0 for "zero".


@pytest.mark.parametrize("attack", list(attacks.ATTACKS))
def test_bad_inputs_give_clear_errors(attack):
  x = np.zeros((2, 4, 4, 3), np.float32)
  labels = (np.ones((3, 4), np.float32), np.ones((2, 4, 4, 3), np.float32) / np.sqrt(3))
  fn = attacks.by_name(attack)
  kw = dict(direction=D.total(), bounds=(-1.0, 1.0))
  with pytest.raises(ValueError, match="NaN"):
    fn(cheap_loss, np.where(x == 0, np.nan, x), labels, eps=1.0, **kw)
  with pytest.raises(ValueError, match="eps must be >= 0"):
    fn(cheap_loss, x, labels, eps=-1.0, **kw)
  with pytest.raises(ValueError, match="outside the input bounds"):
    fn(cheap_loss, x + 5.0, labels, eps=1.0, **kw)
  with pytest.raises(ValueError, match="one value per channel"):
    fn(cheap_loss, x, labels, eps=1.0, direction=D.total(), bounds=(np.zeros(2), np.ones(2)))


def test_nan_loss_leaves_the_batch_finite_and_visible():
  x = np.zeros((2, 4, 4, 3), np.float32)
  labels = (np.ones((3, 4), np.float32), np.ones((2, 4, 4, 3), np.float32) / np.sqrt(3))
  nan_loss = lambda x_, l: {**cheap_loss(x_, l), "bad": jnp.mean(x_, axis=(1, 2, 3)) * jnp.nan}  # pylint: disable=unnecessary-lambda-assignment
  out = attacks.pgd(nan_loss, x, labels, direction=D.gbmta(), eps=1.0, bounds=(-2.0, 2.0),
                    num_steps=2)
  assert np.all(np.isfinite(out.x_adv))
  assert np.all(np.isnan(out.losses["bad"]))


@pytest.mark.parametrize("attack", list(attacks.ATTACKS))
def test_each_attack_compiles_once_per_shape(attack):
  traces = []

  def counted(x, labels):
    traces.append(1)
    return cheap_loss(x, labels)
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (2, 4, 4, 3)).astype(np.float32)
  labels = (rng.normal(size=(3, 4)).astype(np.float32), np.ones((2, 4, 4, 3), np.float32) / 3)
  fn = attacks.by_name(attack)
  kw = {} if attack == "fgsm" else {"num_steps": 2, "step_size": 0.1}
  fn(counted, x, labels, direction=D.gbmta(), eps=1.0, bounds=(-2.0, 2.0), **kw)
  first = len(traces)
  for eps, low in ((2.0, -3.0), (0.5, -2.5)):
    kw = {} if attack == "fgsm" else {"num_steps": 2, "step_size": eps / 3}
    fn(counted, x + 0.1, labels, direction=D.gbmta(), eps=eps, bounds=(low, 2.0), **kw)
  assert len(traces) == first


# ----------------------------------------------------------------------------------------------
# Inside a user's jax.jit / jax.vmap.

ATTACKS = {"fgsm": {}, "pgd": {"num_steps": 2}, "apgd": {"num_steps": 3},
           "auto_sage": {"num_steps": 2}}


@pytest.fixture(scope="module", name="toy")
def fixture_toy():
  params = testing.init(jax.random.key(0), 2, 4)
  xs = jax.random.uniform(jax.random.key(1), (2, 2, 8, 8, 3))  # two independent batches
  ys = jax.vmap(lambda k: testing.random_labels(k, params, 2, 8))(
      jax.random.split(jax.random.key(2), 2))
  return params, xs, ys


def _attack(name, params, x, y, eps=0.05, bounds=(0.0, 1.0)):
  return getattr(attacks, name)(testing.loss_fn, x, (params, y), direction=D.gbmta(), eps=eps,
                                bounds=bounds, **ATTACKS[name]).x_adv


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attacks_under_jit_and_vmap_equal_the_eager_call(toy, name):
  params, xs, ys = toy
  first = lambda tree: jax.tree.map(lambda v: v[0], tree)  # pylint: disable=unnecessary-lambda-assignment
  fn = functools.partial(_attack, name, params)
  eager = np.stack([fn(xs[i], jax.tree.map(lambda v, i=i: v[i], ys)) for i in range(2)])
  traced = jax.jit(lambda x, y, eps, low, high: fn(x, y, eps, (low, high)))
  np.testing.assert_array_equal(traced(xs[0], first(ys), 0.05, 0.0, 1.0), eager[0])
  np.testing.assert_array_equal(jax.jit(jax.vmap(fn))(xs, ys), eager)
  # x captured from outside the trace (concrete): checked, then attacked; XLA may fold it as a
  # constant, so equal up to rounding.
  x0 = xs[0]
  captured = jax.jit(lambda y: fn(x0, y))(first(ys))
  np.testing.assert_allclose(captured, eager[0], atol=1e-6)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_bad_traced_values_give_nan_images_and_a_checkify_error(toy, name):
  params, xs, ys = toy
  x, y = xs[0], jax.tree.map(lambda v: v[0], ys)
  fn = jax.jit(lambda eps, low, high: _attack(name, params, x, y, eps, (low, high)))
  ok = jnp.full(2, 0.05)
  assert np.isnan(fn(ok, 1.0, 0.0)).all()  # low > high: every image
  assert np.isnan(fn(ok, 0.0, jnp.nan)).all()
  per_image = np.asarray(fn(jnp.array([0.05, -1.0]), 0.0, 1.0))
  assert np.isfinite(per_image[0]).all() and np.isnan(per_image[1]).all()
  checked = checkify.checkify(fn)
  err, out = checked(ok.at[1].set(-1.0), 0.0, 1.0)
  with pytest.raises(checkify.JaxRuntimeError, match="eps < 0"):
    err.throw()
  assert np.isnan(out[1]).all()
  err, out = checked(ok, 0.0, 1.0)
  assert err.get() is None and np.isfinite(out).all()


def test_bad_concrete_values_raise_one_line_also_inside_jit(toy):
  params, xs, ys = toy
  x, y = xs[0], jax.tree.map(lambda v: v[0], ys)
  with pytest.raises(ValueError, match=r"^bounds must satisfy low <= high, without NaN") as info:
    _attack("pgd", params, x, y, bounds=(0.0, np.nan))
  assert "\n" not in str(info.value)
  with pytest.raises(ValueError, match="low <= high"):
    jax.jit(lambda y_: _attack("pgd", params, x, y_, bounds=(1.0, 0.0)))(y)
  with pytest.raises(ValueError, match="eps must be >= 0"):
    jax.jit(lambda x_: _attack("fgsm", params, x_, y, eps=-1.0))(x)
