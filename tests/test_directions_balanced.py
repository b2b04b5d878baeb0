"""The balancing rules as attack directions: per-image weights, options, and PGD/APGD driving them.

The rules themselves are checked against independent implementations in
tests/test_directions_balancing.py; here each direction must apply its rule image by image (a NumPy
loop over the images of the per-task input gradients) and raise its attack objective.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtajax import attacks
from mtajax import directions
from mtajax import testing

NAMES = tuple(directions.RULES)


def _per_image_reference(name, grads):
  """D_b = Σ_t α_t g_t,b with α from image b's own Gram matrix, image by image in float64."""
  rule = directions.RULES[name]
  out = []
  for b in range(grads.shape[1]):
    g = grads[:, b]
    w = np.asarray(jax.jit(rule)(jnp.asarray(g @ g.T, jnp.float32)), np.float64)
    out.append(w @ g)
  return np.stack(out)


def _toy(num_tasks=3, batch=2, size=16, seed=0):
  key = jax.random.PRNGKey(seed)
  params = testing.init(key, num_tasks, width=4)
  labels = (params, testing.random_labels(key, params, batch, size))
  x = jax.random.uniform(jax.random.PRNGKey(seed + 1), (batch, size, size, 3), minval=-100.0,
                         maxval=100.0)
  return x, labels


@pytest.mark.parametrize("name", NAMES)
def test_directions_by_name_match_the_per_image_reference(name):
  direction = directions.by_name(name)
  assert direction.name == name and direction.reduction == "image"
  x, labels = _toy()
  d, losses = jax.jit(lambda x_: direction(testing.loss_fn, x_, labels))(x)
  grads, _ = directions.per_task_grads(testing.loss_fn, x, labels)
  grads = np.asarray(grads, np.float64).reshape(grads.shape[0], x.shape[0], -1)
  assert set(losses) == set(testing.loss_fn(x, labels))
  want = _per_image_reference(name, grads)
  got = np.asarray(d, np.float64).reshape(want.shape)
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("attack", ["pgd", "apgd"])
def test_directions_drive_pgd_and_apgd(name, attack):
  x, labels = _toy(seed=3)
  direction = directions.by_name(name)
  eps = 8.0
  result = attacks.by_name(attack)(testing.loss_fn, x, labels, direction=direction, eps=eps,
                                   bounds=(-128.0, 128.0), num_steps=4)
  delta = np.asarray(result.x_adv - x)
  assert np.all(np.isfinite(delta)) and np.abs(delta).max() <= eps
  assert np.abs(delta).max() > 0.5 * eps  # the images moved
  objective = np.asarray(result.objective)
  assert np.all(np.isfinite(objective))
  assert objective[-1].mean() > objective[0].mean()  # the attack raised its objective
  clean = testing.loss_fn(x, labels)
  adv = testing.loss_fn(result.x_adv, labels)
  assert sum(float(jnp.mean(adv[t] / clean[t])) for t in clean) > len(clean)


def test_new_rules_are_registered():
  assert directions.by_name("upgrad") == directions.UPGrad()
  assert directions.by_name("aligned_mtl").name == "aligned_mtl"
  assert {"upgrad", "aligned_mtl"} <= set(directions.registered())


def test_direction_options_and_errors():
  assert directions.by_name("cagrad", c=1.0).c == 1.0
  assert directions.by_name("pcgrad", seed=3).seed == 3
  with pytest.raises(ValueError, match="use c >= 0"):
    directions.by_name("cagrad", c=-0.5)
  with pytest.raises(ValueError, match="use ridge >= 0"):
    directions.by_name("nash_mtl", ridge=-1.0)
  with pytest.raises(ValueError, match="use iterations >= 1"):
    directions.by_name("nash_mtl", iterations=0)
  with pytest.raises(ValueError, match="unknown direction 'mgdaa'"):
    directions.by_name("mgdaa")
