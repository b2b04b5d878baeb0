"""Single-x, Total and SignTotal against analytic gradients."""

import jax.numpy as jnp
import numpy as np
import pytest

import fixtures
from mtajax import directions as D

toy_loss, toy_grads = fixtures.toy_loss, fixtures.toy_grads


@pytest.fixture(name="x")
def fixture_x():
  return np.random.default_rng(0).normal(size=(5, 2, 3, 4)).astype(np.float32)


def test_single_total_sign_total_against_analytic(x):
  _, _, ga, gb = toy_grads(x)
  np.testing.assert_allclose(D.single("a")(toy_loss, x, None)[0], ga, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(D.single("b")(toy_loss, x, None)[0], gb, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(D.total()(toy_loss, x, None)[0], ga + gb, rtol=1e-6, atol=1e-7)
  for method in ("loop", "vmap"):
    np.testing.assert_array_equal(D.sign_total(method)(toy_loss, x, None)[0],
                                  np.sign(ga) + np.sign(gb))


def test_unknown_task(x):
  with pytest.raises(ValueError, match="unknown task 'c'"):
    D.single("c")(toy_loss, x, None)


def test_objectives():
  losses = {"a": jnp.array([1.0, 2.0]), "b": jnp.array([4.0, 8.0])}
  np.testing.assert_allclose(D.total().objective(losses), [5.0, 10.0])
  np.testing.assert_allclose(D.single("b").objective(losses), [4.0, 8.0])
