"""evaluate.Switched: one compiled attack for every direction gives each direction's own attack."""

from __future__ import annotations

import numpy as np
import pytest

import fixtures


def problem():
  """A random plain-JAX net (mtajax.testing) with labels near its clean predictions; one batch
  whose images ignore different numbers of pixels, so per-image and pooled losses differ."""
  predict, params, batches, tasks = fixtures.problem()
  batch = dict(batches[0])
  seg = batch["segment_semantic"].copy()
  for i in range(len(seg)):
    seg[i, :1 + 2 * i] = 255
  return predict, params, {**batch, "segment_semantic": seg}, tasks


NAMES = ("single_segment_semantic", "single_normal", "single_depth_zbuffer", "total", "gbmta")


@pytest.mark.parametrize("attack", ["pgd", "apgd"])
def test_switched_attack_equals_each_direction(attack):
  import functools  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from mtajax import attacks  # pylint: disable=g-import-not-at-top
  from mtajax import directions as D  # pylint: disable=g-import-not-at-top
  from mtajax import evaluate as E  # pylint: disable=g-import-not-at-top
  from mtajax import tasks as mt  # pylint: disable=g-import-not-at-top
  predict, params, batch, tasks = problem()
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  forward = functools.partial(predict, params)
  dirs = tuple(D.by_name(n) for n in NAMES)
  switched = E.Switched(dirs)
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


def test_switched_evaluation_compiles_once():
  from mtajax import directions as D  # pylint: disable=g-import-not-at-top
  from mtajax import evaluate as E  # pylint: disable=g-import-not-at-top
  predict, params, batch, tasks = problem()
  spec = E.AttackSpec("pgd", E.Switched(tuple(D.by_name(n) for n in NAMES)), 2,
                      (("unroll", 1),))
  before = E._compiled._cache_size()  # pylint: disable=protected-access
  evs = [E.evaluate(predict, params, [batch], tasks, spec=spec, eps=8.0,
                    bounds=(-128.0, 128.0), direction_index=i) for i in range(len(NAMES))]
  assert E._compiled._cache_size() == before + 1  # pylint: disable=protected-access
  for i, name in enumerate(NAMES):
    own = E.evaluate(predict, params, [batch], tasks, spec=E.AttackSpec(
        "pgd", D.by_name(name), 2, (("unroll", 1),)), eps=8.0, bounds=(-128.0, 128.0))
    for t in own.losses:
      np.testing.assert_allclose(evs[i].losses[t], own.losses[t], rtol=1e-4, err_msg=name)


def test_switched_rejects_other_directions_and_a_missing_index():
  from mtajax import directions as D  # pylint: disable=g-import-not-at-top
  from mtajax import evaluate as E  # pylint: disable=g-import-not-at-top
  for other in (D.gbmta(method="per_task"), D.sign_total()):
    with pytest.raises(ValueError, match="one program each"):
      E.Switched((D.total(), other))
  predict, params, batch, tasks = problem()
  spec = E.AttackSpec("pgd", E.Switched((D.total(),)), 2)
  with pytest.raises(ValueError, match="direction_index"):
    E.evaluate(predict, params, [batch], tasks, spec=spec, eps=8.0, bounds=(-128.0, 128.0))
