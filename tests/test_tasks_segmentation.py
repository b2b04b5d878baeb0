"""mtajax.tasks.segmentation: the loss against a NumPy reimplementation of the reference criterion
(spec §3); labels out of the class range (issue 25, item 5): one-line errors for concrete labels,
NaN losses and a ``checkify`` error under a trace; one-line errors for bad options and inputs."""

import jax
from jax.experimental import checkify
import jax.numpy as jnp
import numpy as np
import pytest

from mtajax import attacks
from mtajax import directions as D
from mtajax import tasks as mt

from fixtures import (SEG, B, check, h, make_batch, nearest_np, preds, reduce_np, seg_problem,
                      w)


@pytest.mark.parametrize("bad_value", [5, -1, 40])
def test_concrete_out_of_range_labels_raise_one_line(bad_value):
  pred, batch = seg_problem(bad_value)
  with pytest.raises(ValueError, match=r"in \[0, 5\) or the ignore value 255") as info:
    SEG.loss(pred, batch)
  assert "\n" not in str(info.value) and "Fix:" in str(info.value)
  with pytest.raises(ValueError, match=r"\[0, 5\)"):  # captured by a trace: still concrete
    jax.jit(lambda p: SEG.loss(p, batch))(pred)
  loss_fn = mt.make_loss_fn(lambda x: {"segment_semantic": x}, [SEG], "image")
  with pytest.raises(ValueError, match=r"\[0, 5\)"):  # the attacks check before tracing
    attacks.fgsm(loss_fn, pred, batch, direction=D.total(), eps=0.1, bounds=(-10.0, 10.0))


def test_traced_out_of_range_labels_give_nan_losses_and_a_checkify_error():
  pred, good = seg_problem()
  _, batch = seg_problem(5)
  loss = jax.jit(SEG.loss, static_argnums=2)
  for reduction in ("image", "pooled"):
    assert np.isfinite(loss(pred, good, reduction)).all()
    per_image = np.asarray(loss(pred, batch, reduction))
    assert np.isnan(per_image[1:]).all()  # image 2: no valid pixel at all, still NaN
    assert np.isfinite(per_image[0])
  err, _ = checkify.checkify(jax.jit(SEG.loss))(pred, batch)
  with pytest.raises(checkify.JaxRuntimeError, match=r"outside \[0, 5\)"):
    err.throw()


def seg_np(pred, y, weights=None):
  y = nearest_np(y, h, w)
  valid = y != 255
  logp = pred - np.log(np.exp(pred.astype(np.float64)).sum(-1, keepdims=True))
  yy = np.where(valid, y, 0)
  nll = -np.take_along_axis(logp, yy[..., None], -1)[..., 0]
  wt = valid * (1.0 if weights is None else np.asarray(weights)[yy])
  return reduce_np(wt * nll, wt)


@pytest.mark.parametrize("weighted", [False, True])
def test_segmentation_loss(weighted):
  batch = make_batch(0)
  weights = np.random.default_rng(1).uniform(0.2, 3.0, 6) if weighted else None
  task = mt.Segmentation(channels=6, class_weights=weights)
  pred = preds(2, 6)
  check(task, pred, batch, seg_np(pred, batch["segment_semantic"], weights))


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match="expects predictions"):
    mt.Depth().loss(jnp.zeros((B, h, w, 2)), make_batch(0), "image")
  with pytest.raises(ValueError, match="class_weights"):
    mt.Segmentation(channels=6, class_weights=(1.0, 2.0))
  with pytest.raises(ValueError, match="label_encoding"):
    mt.Normal(label_encoding="rgb")
  with pytest.raises(ValueError, match="use_mask"):
    mt.Segmentation(channels=6, use_mask=True).loss(jnp.zeros((B, h, w, 6)), make_batch(0))
