"""evaluate with a Switched direction: one compiled step for every direction, each its own result."""

from __future__ import annotations

import numpy as np
import pytest

from mtajax import attacks

import fixtures


NAMES = ("single_segment_semantic", "single_normal", "single_depth_zbuffer", "total", "gbmta")


def test_switched_evaluation_compiles_once():
  from mtajax import directions as D  # pylint: disable=g-import-not-at-top
  from mtajax import evaluate as E  # pylint: disable=g-import-not-at-top
  predict, params, batch, tasks = fixtures.switched_problem()
  spec = attacks.Attack("pgd", E.Switched(tuple(D.by_name(n) for n in NAMES)), 2)
  kw = dict(spec=spec, eps=8.0, bounds=(-128.0, 128.0), loop="rolled")
  evs = [E.evaluate(predict, params, [batch], tasks, direction_index=0, **kw)]
  with fixtures.traced_programs() as traced:  # every other direction: no new program
    evs += [E.evaluate(predict, params, [batch], tasks, direction_index=i, **kw)
            for i in range(1, len(NAMES))]
  assert not traced
  for i, name in enumerate(NAMES):
    own = E.evaluate(predict, params, [batch], tasks, spec=attacks.Attack(
        "pgd", D.by_name(name), 2), eps=8.0, bounds=(-128.0, 128.0), loop="rolled")
    for t in own.losses:
      np.testing.assert_allclose(evs[i].losses[t], own.losses[t], rtol=1e-4, err_msg=name)


def test_switched_spec_needs_a_direction_index():
  from mtajax import directions as D  # pylint: disable=g-import-not-at-top
  from mtajax import evaluate as E  # pylint: disable=g-import-not-at-top
  predict, params, batch, tasks = fixtures.switched_problem()
  spec = attacks.Attack("pgd", E.Switched((D.total(),)), 2)
  with pytest.raises(ValueError, match="direction_index"):
    E.evaluate(predict, params, [batch], tasks, spec=spec, eps=8.0, bounds=(-128.0, 128.0))
