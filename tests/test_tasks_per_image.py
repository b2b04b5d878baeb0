"""Per-image metrics and the per-image score against NumPy and against one-image dataset metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtajax import tasks as mt
from mtajax.tasks import per_image

H, W, h, w, C, N = 10, 8, 5, 4, 4, 5


def make_data(seed):
  """Five images for five tasks, with ignore pixels and masks; image 0 has no valid label."""
  rng = np.random.default_rng(seed)
  seg = rng.integers(0, C, (N, H, W))
  seg[rng.random((N, H, W)) < 0.2] = 255
  seg[0] = 255
  nrm = rng.uniform(-1, 1, (N, H, W, 3))
  nrm[rng.random((N, H, W)) < 0.1, 1] = 255
  nrm[0] = 255
  dep = rng.uniform(0.5, 4.0, (N, H, W))
  dep[rng.random((N, H, W)) < 0.1] = 0.0
  dep[0] = 0.0
  key, edge = rng.uniform(-1, 1, (2, N, H, W))
  key[rng.random((N, H, W)) < 0.2] = 255
  key[0] = 255
  edge[0] = 255
  batch = {"segment_semantic": seg.astype(np.int32), "normal": nrm.astype(np.float32),
           "normal_mask": (rng.random((N, H, W)) > 0.2).astype(np.float32),
           "depth_zbuffer": dep.astype(np.float32), "keypoints2d": key.astype(np.float32),
           "edge_texture": edge.astype(np.float32)}
  pred = {"segment_semantic": rng.normal(size=(N, h, w, C)),
          "normal": rng.normal(size=(N, h, w, 3)),
          "depth_zbuffer": rng.uniform(-0.5, 4.0, (N, h, w, 1)),
          "keypoints2d": rng.normal(size=(N, h, w, 1)),
          "edge_texture": rng.normal(size=(N, h, w, 1))}
  return {k: v.astype(np.float32) for k, v in pred.items()}, batch


def up(x):
  """Reference nearest upsampling (h, w) -> (H, W)."""
  return x[:, (np.arange(H) * h) // H][:, :, (np.arange(W) * w) // W]


def image_metrics(task, pred, batch):
  p, b = jnp.asarray(pred[task.name]), {k: jnp.asarray(v) for k, v in batch.items()}
  s = per_image.states(task, p, b)
  return jax.jit(lambda s, p, b: per_image.metrics(task, s, p, b))(s, p, b), s


TASK_SETS = [mt.synthetic_tasks(num_classes=C),
             mt.synthetic_tasks(num_classes=C, definition="standard"),
             mt.taskonomy_tasks()[1:], (mt.Segmentation(channels=C, metric_set="taskonomy",
                                                        class_weights=(1.0, 2.0, 0.5, 1.0)),)]


@pytest.mark.parametrize("tasks", TASK_SETS)
def test_each_image_equals_the_dataset_metric_of_that_image_alone(tasks):
  pred, batch = make_data(0)
  for task in tasks:
    got, _ = image_metrics(task, pred, batch)
    assert set(got) == set(task.metrics)
    for i in range(1, N):
      one = task.metric_update(task.metric_init(), jnp.asarray(pred[task.name][i:i + 1]),
                               {k: jnp.asarray(v[i:i + 1]) for k, v in batch.items()})
      want = task.metric_compute(one)
      for m, v in want.items():
        tol = 0.01 if m == "Angle Median" else 1e-4  # the dataset median is a histogram's
        np.testing.assert_allclose(float(got[m][i]), v, rtol=1e-4, atol=tol,
                                   err_msg=f"{task.name} {m}")
    for m, v in got.items():  # image 0 has no valid pixel
      assert float(v[0]) == 0.0, (task.name, m)


def test_segmentation_and_normal_against_numpy():
  pred, batch = make_data(1)
  for definition in ("reference", "standard"):
    task = mt.Segmentation(channels=C, definition=definition)
    got, _ = image_metrics(task, pred, batch)
    p_all = up(pred["segment_semantic"].argmax(-1))
    for i in range(1, N):
      y, p = batch["segment_semantic"][i], p_all[i]
      v = y != 255
      ious = []
      for c in range(C):
        tp = np.sum((y == c) & (p == c) & v)
        union = np.sum((y == c) & v) + np.sum((p == c) & v) - tp
        if (tp > 0) if definition == "reference" else (union > 0):
          ious.append(tp / union)
      np.testing.assert_allclose(got["mIoU"][i], np.mean(ious) if ious else 0.0, rtol=1e-6)
      np.testing.assert_allclose(got["Pixel Acc"][i], np.sum((p == y) & v) / np.sum(v), rtol=1e-6)
  task = mt.Normal(label_encoding="unit")
  got, _ = image_metrics(task, pred, batch)
  pn = up(pred["normal"])
  pn = pn / np.linalg.norm(pn, axis=-1, keepdims=True)
  for i in range(1, N):
    g = batch["normal"][i]
    v = (g.max(-1) != 255) & (batch["normal_mask"][i] == 1)
    gn = g / np.linalg.norm(g, axis=-1, keepdims=True)
    ang = np.degrees(np.arccos(np.clip(np.sum(pn[i] * gn, -1), -1, 1)))[v]
    np.testing.assert_allclose(got["Angle Median"][i], np.median(ang), rtol=1e-5)  # exact
    np.testing.assert_allclose(got["Angle Mean"][i], ang.mean(), rtol=1e-5)
    np.testing.assert_allclose(got["Angle 22.5"][i], 100 * np.mean(ang <= 22.5), rtol=1e-5)


def test_depth_against_numpy():
  pred, batch = make_data(2)
  got, _ = image_metrics(mt.Depth(), pred, batch)
  p = up(pred["depth_zbuffer"][..., 0])
  for i in range(1, N):
    g = batch["depth_zbuffer"][i]
    v = g > 3e-5
    err = np.abs(p[i] - g)[v]
    np.testing.assert_allclose(got["abs_err"][i], err.mean(), rtol=1e-5)
    np.testing.assert_allclose(got["rel_err"][i], (err / g[v]).mean(), rtol=1e-5)
    ratio = np.maximum(p[i][v] / g[v], g[v] / p[i][v])
    np.testing.assert_allclose(got["sigma_1.25"][i], 100 * np.mean(ratio <= 1.25), rtol=1e-5)


def test_score_against_numpy():
  tasks = mt.synthetic_tasks(3, num_classes=C)
  rng = np.random.default_rng(3)
  def mk():
    return {t.name: {m: rng.uniform(0.1, 1, N).astype(np.float32) for m in t.metrics}
            for t in tasks}
  adv, clean = mk(), mk()
  ref = {t.name: {m: float(rng.uniform(0.2, 1)) for m in t.metrics} for t in tasks}
  s, drops = per_image.score(tasks, adv, clean, ref)
  want_t = {}
  for t in tasks:
    rel = [(clean[t.name][m] - adv[t.name][m]) / ref[t.name][m] * (1 if hib else -1)
           for m, hib in t.metrics.items()]
    want_t[t.name] = 100 * np.mean(rel, axis=0)
    np.testing.assert_allclose(drops[t.name], want_t[t.name], rtol=1e-5)
  np.testing.assert_allclose(s, np.mean(list(want_t.values()), axis=0), rtol=1e-5)
  # Same signs as the ARP: on one image with the reference as its own clean value, s == ARP.
  def one(d):
    return {t: {m: float(v[0]) for m, v in ms.items()} for t, ms in d.items()}
  s1, _ = per_image.score(tasks, adv, clean, one(clean))
  np.testing.assert_allclose(s1[0], mt.arp(one(clean), one(adv), tasks,
                                           reference_rounding=False).total, rtol=1e-4)


def test_a_task_without_per_image_metric_is_named():
  class Custom(mt.MaskedL1):
    pass
  per_image.check([Custom()])  # subclasses inherit the registration

  class Odd(mt.Task):
    metrics = {"x": True}
    valid = pixel_loss = metric_init = metric_update = metric_compute = None
  with pytest.raises(ValueError, match="register"):
    per_image.check([Odd(name="odd", channels=1)])
