"""Losses of mtajax.tasks against NumPy reimplementations of the reference criteria (spec §3)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtajax import tasks as mt

B, H, W, h, w = 4, 13, 11, 5, 4
TOL = dict(rtol=1e-5, atol=1e-6)


def nearest_np(x, out_h, out_w):
  """PyTorch-style nearest: source index floor(i * in / out), clamped (Python float arithmetic)."""
  rows = [min(math.floor(i * x.shape[1] / out_h), x.shape[1] - 1) for i in range(out_h)]
  cols = [min(math.floor(j * x.shape[2] / out_w), x.shape[2] - 1) for j in range(out_w)]
  return x[:, rows][:, :, cols]


def make_batch(seed, num_classes=6, masks=True):
  """Labels with ignore pixels, masks and image 0 entirely invalid for every task."""
  rng = np.random.default_rng(seed)
  seg = rng.integers(0, num_classes, (B, H, W))
  seg[rng.random((B, H, W)) < 0.2] = 255
  seg[0] = 255
  normal = rng.integers(0, 255, (B, H, W, 3)).astype(np.float32)
  normal[rng.random((B, H, W)) < 0.2, rng.integers(0, 3)] = 255
  normal[0, ..., 1] = 255
  depth = rng.uniform(0.5, 5.0, (B, H, W)).astype(np.float32)
  depth[rng.random((B, H, W)) < 0.2] = 0.0
  depth[0] = 0.0
  key = rng.uniform(-1, 1, (B, H, W)).astype(np.float32)
  key[rng.random((B, H, W)) < 0.2] = 255
  key[0] = 255
  batch = {"segment_semantic": seg.astype(np.int32), "normal": normal,
           "depth_zbuffer": depth, "keypoints2d": key}
  if masks:
    for name in ("normal", "depth_zbuffer"):
      mask = (rng.random((B, H, W)) > 0.3).astype(np.float32)
      mask[0] = 0.0
      batch[name + "_mask"] = mask
  return batch


def preds(seed, channels):
  return np.random.default_rng(seed).normal(size=(B, h, w, channels)).astype(np.float32)


def reduce_np(num, den):
  """Reference 'none' (per image) and 'mean' (batch-pooled) from per-pixel numerator/weights."""
  per_image = np.array([n[d > 0].sum() / d.sum() if d.sum() > 0 else 0.0
                        for n, d in zip(num, den)])
  pooled = num.sum() / den.sum()
  return per_image, pooled


def seg_np(pred, y, weights=None):
  y = nearest_np(y, h, w)
  valid = y != 255
  logp = pred - np.log(np.exp(pred.astype(np.float64)).sum(-1, keepdims=True))
  yy = np.where(valid, y, 0)
  nll = -np.take_along_axis(logp, yy[..., None], -1)[..., 0]
  wt = valid * (1.0 if weights is None else np.asarray(weights)[yy])
  return reduce_np(wt * nll, wt)


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


def l1_np(pred, g, valid):
  return reduce_np(np.abs(pred[..., 0] - g) * valid, valid.astype(np.float64))


def check(task, pred, batch, want):
  per_image, pooled = want
  loss = jax.jit(task.loss, static_argnums=2)
  got_image = np.asarray(loss(pred, batch, "image"))
  got_pooled = np.asarray(loss(pred, batch, "pooled"))
  np.testing.assert_allclose(got_image, per_image, **TOL)
  np.testing.assert_allclose(got_pooled.mean(), pooled, **TOL)
  assert np.all(np.isfinite(got_image)) and got_image[0] == 0.0
  counts = np.asarray(task.valid_count(pred.shape, batch))
  assert counts[0] == 0 and np.all(counts[1:] > 0)


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


@pytest.mark.parametrize("weighted", [False, True])
def test_segmentation_loss(weighted):
  batch = make_batch(0)
  weights = np.random.default_rng(1).uniform(0.2, 3.0, 6) if weighted else None
  task = mt.Segmentation(channels=6, class_weights=weights)
  pred = preds(2, 6)
  check(task, pred, batch, seg_np(pred, batch["segment_semantic"], weights))


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


def test_depth_loss_without_and_with_mask():
  batch = make_batch(8, masks=False)
  pred = preds(9, 1)
  g = nearest_np(batch["depth_zbuffer"], h, w)
  check(mt.Depth(), pred, batch, l1_np(pred, g, g > 3e-5))
  batch = make_batch(10)
  batch["depth_zbuffer"][1, :4] = 255
  g = nearest_np(batch["depth_zbuffer"], h, w)
  valid = (g != 255) & (nearest_np(batch["depth_zbuffer_mask"], h, w) == 1)
  check(mt.Depth(metric_set="taskonomy"), pred, batch, l1_np(pred, g, valid))


def test_keypoint_loss():
  batch = make_batch(11)
  pred = preds(12, 1)
  g = nearest_np(batch["keypoints2d"], h, w)
  check(mt.MaskedL1(), pred, batch, l1_np(pred, g, g != 255))


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


def test_jit_vmap_per_task_gradients_match_eager_loop():
  """Regression for the XLA:CPU bug with normalise-then-reduce losses (prototype findings §1).

  Without mtajax's XLA flag, jaxlib 0.10.2 gets the normal-task gradient wrong at this size.
  """
  n, s = 8, 41
  rng = np.random.default_rng(16)
  batch = {"normal": rng.uniform(-1, 1, (n, s, s, 3)).astype(np.float32),
           "depth_zbuffer": rng.uniform(0.5, 5, (n, s, s)).astype(np.float32)}
  tasks = (mt.Normal(label_encoding="unit"), mt.Depth())
  kernel = jnp.asarray(rng.normal(size=(3, 4)).astype(np.float32))
  x = jnp.asarray(rng.normal(size=(n, s, s, 3)).astype(np.float32))

  def predict(x):
    f = x @ kernel
    return {"normal": f[..., :3], "depth_zbuffer": f[..., 3:]}

  loss_fn = mt.make_loss_fn(predict, tasks, "image")
  stacked = lambda x: jnp.stack([jnp.mean(loss_fn(x, batch)[t.name]) for t in tasks])

  @jax.jit
  def per_task_grads(x):
    values, vjp = jax.vjp(stacked, x)
    return jax.vmap(lambda c: vjp(c)[0])(jnp.eye(values.shape[0]))

  eager = np.stack([jax.grad(lambda x, i=i: stacked(x)[i])(x) for i in range(len(tasks))])
  np.testing.assert_allclose(per_task_grads(x), eager, rtol=1e-4, atol=1e-4 * np.abs(eager).max())


def test_make_loss_fn_and_total_loss():
  batch = make_batch(17)
  tasks = mt.nyuv2_tasks()[1:]
  outputs = {"normal": jnp.asarray(preds(18, 3)), "depth_zbuffer": jnp.asarray(preds(19, 1))}
  losses = jax.jit(mt.make_loss_fn(lambda x: outputs, tasks, "pooled"))(0.0, batch)
  assert set(losses) == {"normal", "depth_zbuffer"}
  for t in tasks:
    np.testing.assert_allclose(losses[t.name], t.loss(outputs[t.name], batch, "pooled"), **TOL)
  want = 2 * np.mean(losses["normal"]) + np.mean(losses["depth_zbuffer"])
  np.testing.assert_allclose(mt.total_loss(losses, {"normal": 2.0}), want, **TOL)
  with pytest.raises(ValueError, match="unknown tasks"):
    mt.total_loss(losses, {"edge_texture": 1.0})
  with pytest.raises(ValueError, match="reduction"):
    mt.make_loss_fn(lambda x: outputs, tasks, "mean")
  with pytest.raises(ValueError, match="no output"):
    mt.make_loss_fn(lambda x: outputs, mt.nyuv2_tasks(), "image")(0.0, batch)


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match="expects predictions"):
    mt.Depth().loss(jnp.zeros((B, h, w, 2)), make_batch(0), "image")
  with pytest.raises(ValueError, match="class_weights"):
    mt.Segmentation(channels=6, class_weights=(1.0, 2.0))
  with pytest.raises(ValueError, match="label_encoding"):
    mt.Normal(label_encoding="rgb")
  with pytest.raises(ValueError, match="use_mask"):
    mt.Segmentation(channels=6, use_mask=True).loss(jnp.zeros((B, h, w, 6)), make_batch(0))
