"""The attacks inside a user's ``jax.jit`` / ``jax.vmap``, and bad values there (issue 25, item 5).

Traced and captured inputs give the eager result; bad traced values (ε < 0, low > high, NaN
bounds) give NaN images and a ``checkify`` error, bad concrete ones a one-line ValueError."""

import functools

import jax
from jax.experimental import checkify
import jax.numpy as jnp
import numpy as np
import pytest

from mtajax import attacks
from mtajax import directions as D
from mtajax import testing

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
