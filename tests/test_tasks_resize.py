"""mtajax.tasks.resize: PyTorch-style nearest resizing, and one warning per shape pair for labels
resized to the prediction unless an integer down/up-sampling (issue 25, item 5)."""

import warnings

import jax.numpy as jnp
import numpy as np

from mtajax import tasks as mt

from fixtures import SEG, nearest_np, seg_problem


def test_nearest_indices_match_float32_rule_for_reference_sizes():
  for a, b in [(321, 41), (224, 29), (321, 11), (224, 7), (256, 224)]:
    for n_in, n_out in [(a, b), (b, a)]:
      scale = np.float32(n_in) / np.float32(n_out)
      torch_like = np.minimum(np.floor(np.arange(n_out, dtype=np.float32) * scale), n_in - 1)
      np.testing.assert_array_equal(mt.nearest_indices(n_in, n_out), torch_like.astype(np.int64))


def test_resize_nearest_matches_numpy():
  x = np.arange(2 * 13 * 11 * 3).reshape(2, 13, 11, 3)
  for out in [(5, 4), (29, 17), (13, 11)]:
    np.testing.assert_array_equal(mt.resize_nearest(jnp.asarray(x), out), nearest_np(x, *out))


def test_label_resize_warns_once_per_shape_pair_unless_an_integer_scaling():
  pred, _ = seg_problem()
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("default")
    for hw in (4, 8, 16, 15, 8):  # equal, ×2, ×4, ceil(15 / 4): the models' output strides
      SEG.loss(pred, seg_problem(hw=hw)[1])
    assert not caught
    for _ in range(2):
      SEG.loss(pred, seg_problem(hw=6)[1])
  assert len(caught) == 1
  assert "labels 6x6 resized to the prediction's 4x4" in str(caught[0].message)
