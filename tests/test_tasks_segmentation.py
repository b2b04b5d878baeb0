"""Segmentation labels out of the class range, and labels resized to the prediction (issue 25,
item 5): one-line errors for concrete labels, NaN losses and a ``checkify`` error under a trace,
one warning per shape pair for a resize that is not an integer down/up-sampling."""

import warnings

import jax
from jax.experimental import checkify
import jax.numpy as jnp
import numpy as np
import pytest

from mtajax import attacks
from mtajax import directions as D
from mtajax import tasks as tasks_lib

SEG = tasks_lib.Segmentation(channels=5)


def _problem(bad_value=None, hw=4):
  rng = np.random.default_rng(0)
  pred = jnp.asarray(rng.normal(size=(3, 4, 4, 5)), jnp.float32)
  y = rng.integers(0, 5, (3, hw, hw)).astype(np.int32)
  y[0, 0, 0] = 255  # ignored: fine
  if bad_value is not None:
    y[1, 1, 1] = bad_value
    y[2] = bad_value  # every pixel out of range
  return pred, {"segment_semantic": jnp.asarray(y)}


@pytest.mark.parametrize("bad_value", [5, -1, 40])
def test_concrete_out_of_range_labels_raise_one_line(bad_value):
  pred, batch = _problem(bad_value)
  with pytest.raises(ValueError, match=r"in \[0, 5\) or the ignore value 255") as info:
    SEG.loss(pred, batch)
  assert "\n" not in str(info.value) and "Fix:" in str(info.value)
  with pytest.raises(ValueError, match=r"\[0, 5\)"):  # captured by a trace: still concrete
    jax.jit(lambda p: SEG.loss(p, batch))(pred)
  loss_fn = tasks_lib.make_loss_fn(lambda x: {"segment_semantic": x}, [SEG], "image")
  with pytest.raises(ValueError, match=r"\[0, 5\)"):  # the attacks check before tracing
    attacks.fgsm(loss_fn, pred, batch, direction=D.total(), eps=0.1, bounds=(-10.0, 10.0))


def test_traced_out_of_range_labels_give_nan_losses_and_a_checkify_error():
  pred, good = _problem()
  _, batch = _problem(5)
  loss = jax.jit(SEG.loss, static_argnums=2)
  for reduction in ("image", "pooled"):
    assert np.isfinite(loss(pred, good, reduction)).all()
    per_image = np.asarray(loss(pred, batch, reduction))
    assert np.isnan(per_image[1:]).all()  # image 2: no valid pixel at all, still NaN
    assert np.isfinite(per_image[0])
  err, _ = checkify.checkify(jax.jit(SEG.loss))(pred, batch)
  with pytest.raises(checkify.JaxRuntimeError, match=r"outside \[0, 5\)"):
    err.throw()


def test_label_resize_warns_once_per_shape_pair_unless_an_integer_scaling():
  pred, _ = _problem()
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("default")
    for hw in (4, 8, 16, 15, 8):  # equal, ×2, ×4, ceil(15 / 4): the models' output strides
      SEG.loss(pred, _problem(hw=hw)[1])
    assert not caught
    for _ in range(2):
      SEG.loss(pred, _problem(hw=6)[1])
  assert len(caught) == 1
  assert "labels 6x6 resized to the prediction's 4x4" in str(caught[0].message)
