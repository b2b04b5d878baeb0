"""dispatch.jit: the programs of mtajax's host loops carry no effect (JAX's C++ dispatch serves
them), compute what jax.jit computes, and keep jax.jit's static arguments."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import checkify

import mtajax  # noqa: F401  (XLA:CPU workaround before JAX initialises)
from mtajax import dispatch
from mtajax.train import config as config_lib
from mtajax.train import step as step_lib

from fixtures import RECIPE_TASKS, recipe_apply, recipe_problem


def _checked(x, *, scale):
  checkify.debug_check(jnp.all(x > 0), "x must be positive")
  return jnp.sin(x) * scale


def test_checks_are_discharged_and_results_equal_jax_jit():
  x = jnp.linspace(0.1, 2.0, 7)
  plain = jax.jit(_checked, static_argnames="scale")
  fast = dispatch.jit(_checked, static_argnames="scale")
  assert jax.make_jaxpr(lambda v: plain(v, scale=2.0))(x).effects  # the check's effect
  assert not jax.make_jaxpr(lambda v: fast(v, scale=2.0))(x).effects
  for scale in (2.0, 3.0):  # a static argument: one program each, as with jax.jit
    np.testing.assert_array_equal(fast(x, scale=scale), plain(x, scale=scale))
  assert fast._cache_size() == 2  # pylint: disable=protected-access
  # Discharged means gone: a caller's checkify finds nothing (use it only in host loops).
  err, out = checkify.checkify(fast, errors=checkify.user_checks)(-x, scale=1.0)
  assert err.get() is None and np.all(np.isfinite(out))
  err, _ = checkify.checkify(plain, errors=checkify.user_checks)(-x, scale=1.0)
  assert "x must be positive" in err.get()


def test_adversarial_train_step_has_no_effect():
  """The reference recipe attacks a segmentation head (a label-range debug_check) in the step."""
  config = config_lib.default_config()
  config.adv.mode, config.adv.num_steps = "reference", 2
  params, stats, batch = recipe_problem()
  optimizer = optax.sgd(0.1)
  state = step_lib.init_state(params, stats, optimizer, 0)
  step = step_lib.make_train_step(recipe_apply, RECIPE_TASKS, optimizer, config)
  assert not jax.make_jaxpr(step)(state, batch).effects
  checked = jax.jit(step.__wrapped__.__wrapped__)  # the same step through jax.jit
  assert jax.make_jaxpr(checked)(state, batch).effects
  got, want = step(state, batch), checked(state, batch)
  jax.tree.map(np.testing.assert_array_equal, got, want)
