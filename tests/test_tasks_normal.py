"""mtajax.tasks.normal: the normal loss against a NumPy reimplementation of the reference criterion
(spec §3), and the gradient of its batch-pooled reduction."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtajax import tasks as mt

from fixtures import check, h, make_batch, nearest_np, preds, reduce_np, w


def normal_np(pred, g, mask=None, decode=False):
  g = nearest_np(g.astype(np.float64), h, w)
  valid = g.max(-1) < 255
  if mask is not None:
    valid &= nearest_np(mask, h, w) == 1
  if decode:
    g = 2 * g / 255 - 1
  unit = lambda v: v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
  cos = (unit(pred.astype(np.float64)) * unit(g)).sum(-1)
  return reduce_np((1 - cos) * valid, valid.astype(np.float64))


@pytest.mark.parametrize("encoding", ["uint8", "uint8_decoded"])
def test_normal_loss_uint8_labels(encoding):
  batch = make_batch(3, masks=False)
  pred = preds(4, 3)
  check(mt.Normal(label_encoding=encoding), pred, batch,
        normal_np(pred, batch["normal"], decode=encoding == "uint8_decoded"))


def test_normal_loss_unit_labels_with_mask():
  batch = make_batch(5)
  rng = np.random.default_rng(6)
  unit = rng.uniform(-1, 1, batch["normal"].shape).astype(np.float32)
  batch["normal"] = np.where(batch["normal"] == 255, 255, unit).astype(np.float32)
  pred = preds(7, 3)
  check(mt.Normal(label_encoding="unit"), pred, batch,
        normal_np(pred, batch["normal"], batch["normal_mask"]))


def test_pooled_gradient_equals_gradient_of_batch_pooled_loss():
  batch = make_batch(13, masks=False)
  task = mt.Normal(label_encoding="uint8")
  pred = jnp.asarray(preds(14, 3))

  def pooled_direct(p):  # the reference 'mean' criterion written directly
    g = jnp.asarray(nearest_np(batch["normal"], h, w))
    valid = jnp.max(g, -1) < 255
    unit = lambda v: v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
    cos = jnp.sum(unit(p) * unit(g), -1)
    return 1 - jnp.sum(jnp.where(valid, cos, 0)) / jnp.sum(valid)

  got = jax.jit(jax.grad(lambda p: jnp.mean(task.loss(p, batch, "pooled"))))(pred)
  np.testing.assert_allclose(got, jax.grad(pooled_direct)(pred), rtol=1e-5, atol=1e-7)
  image_grad = jax.jit(jax.grad(lambda p: jnp.sum(task.loss(p, batch, "image"))))(pred)
  assert np.all(np.isfinite(image_grad)) and np.all(np.asarray(image_grad)[0] == 0)
