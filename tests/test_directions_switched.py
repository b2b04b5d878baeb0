"""Switched: one compiled attack for every direction gives each direction's own attack."""

import functools

import jax.numpy as jnp
import numpy as np
import pytest

import fixtures
from mtajax import attacks
from mtajax import directions as D
from mtajax import tasks as mt

NAMES = ("single_segment_semantic", "single_normal", "single_depth_zbuffer", "total", "gbmta")


@pytest.mark.parametrize("attack", ["pgd", "apgd"])
def test_switched_attack_equals_each_direction(attack):
  predict, params, batch, tasks = fixtures.switched_problem()
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  forward = functools.partial(predict, params)
  dirs = tuple(D.by_name(n) for n in NAMES)
  switched = D.Switched(dirs)
  kw = dict(eps=8.0, bounds=(-128.0, 128.0), num_steps=3, unroll=1)
  x = batch["image"]
  moved = []
  for i, d in enumerate(dirs):
    own = attacks.by_name(attack)(mt.make_loss_fn(forward, tasks, d.reduction), x, batch,
                                  direction=d, **kw)
    one = attacks.by_name(attack)(mt.make_loss_fn(forward, tasks, "pooled"), x, batch,
                                  direction=switched.at(i), **kw)
    for t in own.losses:  # Each direction's own loss reduction, iterate by iterate.
      np.testing.assert_allclose(one.losses[t], own.losses[t], rtol=1e-4, err_msg=f"{d.name} {t}")
    np.testing.assert_allclose(one.objective, own.objective, rtol=1e-4, atol=1e-6)
    # The same sign steps: at most a few elements may flip where a gradient is ~0.
    assert np.mean(np.asarray(one.x_adv) != np.asarray(own.x_adv)) < 1e-3, d.name
    moved.append(float(jnp.max(jnp.abs(one.x_adv - x))))
  assert min(moved) > 0  # Every direction attacked.


def test_switched_rejects_other_directions():
  for other in (D.gbmta(method="per_task"), D.sign_total()):
    with pytest.raises(ValueError, match="one program each"):
      D.Switched((D.total(), other))


def test_switched_orders_its_choices_and_drops_repeats():
  got = D.switched([D.gbmta(), D.total(), D.single("b"), D.total(), D.single("a")])
  assert got.choices == (D.single("b"), D.single("a"), D.total(), D.gbmta())
  assert got.name == "single_b|single_a|total|gbmta"
  assert D.switchable(D.gbmta()) and not D.switchable(D.gbmta(method="per_task"))
  assert not D.switchable(D.by_name("upgrad"))
