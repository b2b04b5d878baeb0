"""GB-MTA against analytic gradients; its log-trick and per-task paths against each other."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fixtures
from mtajax import directions as D
from mtajax import testing

toy_loss, toy_grads = fixtures.toy_loss, fixtures.toy_grads


@pytest.fixture(name="x")
def fixture_x():
  return np.random.default_rng(0).normal(size=(5, 2, 3, 4)).astype(np.float32)


def test_gbmta_against_analytic(x):
  la, lb, ga, gb = toy_grads(x)
  want = ga / la[:, None, None, None] + gb / lb[:, None, None, None]
  for method in ("log", "per_task"):
    got = jax.jit(lambda x_, m=method: D.gbmta(method=m)(toy_loss, x_, None)[0])(x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("num_tasks", [3, 5])
def test_gbmta_log_trick_equals_per_task_sum_on_random_nets(seed, num_tasks):
  key = jax.random.PRNGKey(seed)
  params = testing.init(key, num_tasks, width=8)
  labels = (params, testing.random_labels(key, params, 3, 16))
  x = jax.random.uniform(key, (3, 16, 16, 3), minval=-100.0, maxval=100.0)
  one = jax.jit(lambda x_: D.gbmta(method="log")(testing.loss_fn, x_, labels)[0])(x)
  ref = jax.jit(lambda x_: D.gbmta(method="per_task")(testing.loss_fn, x_, labels)[0])(x)
  rel = float(jnp.max(jnp.abs(one - ref)) / jnp.max(jnp.abs(ref)))
  assert rel < 1e-5, rel


@pytest.mark.parametrize("method", ["log", "per_task"])
def test_gbmta_zero_losses_get_zero_weight(x, method):
  def loss(x_, labels):
    out = toy_loss(x_, labels)
    return {"a": out["a"], "zero": 0.0 * out["b"], "negative": -out["b"]}
  la, _, ga, _ = toy_grads(x)
  got, _ = D.gbmta(method=method)(loss, x, None)
  np.testing.assert_allclose(got, ga / la[:, None, None, None], rtol=1e-5)


def test_objective():
  losses = {"a": jnp.array([1.0, 2.0]), "b": jnp.array([4.0, 8.0])}
  base = {"a": 2.0, "b": jnp.array([4.0, 4.0])}
  np.testing.assert_allclose(D.gbmta().objective(losses, base), [-0.5, 1.0])
