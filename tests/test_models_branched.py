"""BranchedModel: tree evaluation, equivalence with chains / a single trunk, identical init."""

import jax
import numpy as np
import pytest
from flax import nnx

import mtajax  # noqa: F401  (XLA:CPU workaround before JAX initialises)
from mtajax import models as M
from mtajax.models.heads import ConvHead

from fixtures import CALLS, TOY_TASKS, random_x, tiny_model


def test_each_copy_runs_once_and_feeds_its_children():
  layout = M.enumerate_layouts(3)[5]  # 2, 2, 2, 3, 3 copies
  model = nnx.view(tiny_model(layout, identical_copies=False), use_running_average=True,
                   deterministic=True)
  copies = [c for block in model.copies for c in block]
  CALLS.clear()
  out = model(random_x())
  assert sorted(CALLS[id(c)] for c in copies) == [1] * 12 and sum(CALLS.values()) == 12
  # Against T independent chains built from the same copies.
  for t, name in enumerate(TOY_TASKS):
    h = random_x()
    for i in range(5):
      h = model.copies[i][layout.group_index(i, t)](h)
    np.testing.assert_array_equal(out[name], model.heads[t](h))
  # A one-task forward runs only that task's chain and gives the same values.
  CALLS.clear()
  one = model(random_x(), tasks=["normal"])
  assert list(one) == ["normal"] and sum(CALLS.values()) == 5
  np.testing.assert_array_equal(one["normal"], out["normal"])
  with pytest.raises(ValueError, match="Unknown tasks"):
    model(random_x(), tasks=["depth"])


def test_all_shared_with_identical_heads_equals_single_trunk():
  # An AS small model (coarse->fine: 7 fine blocks) against a plain Sequential trunk built from the
  # same factories with the documented key order (block i: i-th params draw; heads afterwards).
  model = M.build_model("small", TOY_TASKS | {"normal": 5, "depth_zbuffer": 5}, 0, rngs=nnx.Rngs(3))
  for head in model.heads:
    nnx.update(head, nnx.state(model.heads[0]))
  rngs = nnx.Rngs(3)
  trunk = nnx.Sequential(*[f(rngs=nnx.Rngs(params=rngs.params()))
                           for f in M.backbone_blocks("small")])
  head = ConvHead(64, 5, hidden=32, rngs=nnx.Rngs(params=rngs.params()))
  x = random_x((2, 16, 16, 3))
  plain = nnx.view(nnx.Sequential(trunk, head), use_running_average=True, deterministic=True)
  expected = nnx.jit(lambda net, x: net(x))(plain, x)
  predict, state = M.pure_predict(model)
  out = jax.jit(predict)(state, x)
  for name in TOY_TASKS:
    np.testing.assert_array_equal(out[name], expected)


def test_identical_copies_start_equal_and_do_not_depend_on_layout():
  t3 = M.enumerate_layouts(3)
  ind, as_ = tiny_model(t3[2]), tiny_model(t3[0])
  for i in range(5):
    for copy in ind.copies[i]:
      np.testing.assert_array_equal(copy.conv.kernel[...], as_.copies[i][0].conv.kernel[...])
  for a, b in zip(ind.heads, as_.heads):
    np.testing.assert_array_equal(a.conv1.kernel[...], b.conv1.kernel[...])
  indep = tiny_model(t3[2], identical_copies=False)
  assert not np.allclose(indep.copies[0][0].conv.kernel[...], indep.copies[0][1].conv.kernel[...])
