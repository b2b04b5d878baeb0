"""Streaming metrics of mtajax.tasks against NumPy reimplementations of spec §6.2."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtajax import tasks as mt

H, W, h, w = 11, 9, 4, 3
C = 5
THRESHOLDS = (11.25, 22.5, 30.0)
SIGMAS = (1.25, 1.25**2, 1.25**3)


def nearest_np(x, out_h, out_w):
  rows = [min(math.floor(i * x.shape[1] / out_h), x.shape[1] - 1) for i in range(out_h)]
  cols = [min(math.floor(j * x.shape[2] / out_w), x.shape[2] - 1) for j in range(out_w)]
  return x[:, rows][:, :, cols]


def make_data(seed, n):
  """One batch of ``n`` images for all five tasks: ignore pixels, masks, image 0 empty."""
  rng = np.random.default_rng(seed)
  seg = rng.integers(0, C, (n, H, W))
  seg[rng.random((n, H, W)) < 0.2] = 255
  normal = rng.uniform(-1, 1, (n, H, W, 3))
  normal[rng.random((n, H, W)) < 0.1, 0] = 255
  depth = rng.uniform(0.5, 4.0, (n, H, W))
  depth[rng.random((n, H, W)) < 0.1] = 0.0
  key, edge = rng.uniform(-1, 1, (2, n, H, W))
  key[rng.random((n, H, W)) < 0.2] = 255
  edge[rng.random((n, H, W)) < 0.2] = 255
  batch = {"segment_semantic": seg.astype(np.int32), "normal": normal.astype(np.float32),
           "normal_mask": (rng.random((n, H, W)) > 0.2).astype(np.float32),
           "depth_zbuffer": depth.astype(np.float32),
           "keypoints2d": key.astype(np.float32), "edge_texture": edge.astype(np.float32)}
  batch["segment_semantic"][0] = 255
  batch["normal_mask"][0] = 0
  batch["depth_zbuffer"][0] = 0
  batch["keypoints2d"][0] = 255
  pred = {"segment_semantic": rng.normal(size=(n, h, w, C)),
          "normal": rng.normal(size=(n, h, w, 3)),
          "depth_zbuffer": rng.uniform(-0.5, 4.0, (n, h, w, 1)),
          "keypoints2d": rng.normal(size=(n, h, w, 1)),
          "edge_texture": rng.normal(size=(n, h, w, 1))}
  pred["depth_zbuffer"][1, 0, 0, 0] = 0.0  # p = 0: ratio g/p = inf, never within
  return {k: v.astype(np.float32) for k, v in pred.items()}, batch


def split(data, sizes):
  pred, batch = data
  edges = np.cumsum([0, *sizes])
  return [({k: v[a:b] for k, v in pred.items()}, {k: v[a:b] for k, v in batch.items()})
          for a, b in zip(edges[:-1], edges[1:])]


def accumulate(tasks, batches):
  upd = jax.jit(lambda s, p, b: mt.metrics.update(tasks, s, p, b))
  state = mt.metrics.init(tasks)
  for pred, batch in batches:
    state = upd(state, pred, batch)
  return mt.metrics.compute(tasks, state)


def batch_mean(values, counts, sizes, standard):
  """Reference Q19: size-weighted mean of per-batch pooled means; standard: pixel-weighted."""
  values, counts, sizes = map(np.asarray, (values, counts, sizes))
  if standard:
    return (values * counts).sum() / counts.sum()
  used = counts > 0
  return (values[used] * sizes[used]).sum() / sizes[used].sum()


def reference_np(batches, standard=False, class_weights=None):
  """All metrics of the synthetic task set (plus Taskonomy's err and cosine) in NumPy."""
  conf = np.zeros((C, C))
  acc, err, abs_e, rel_e, key_e, edge_e = ([] for _ in range(6))
  angles, cosines, ratios, sizes = [], [], [], []
  cw = np.ones(C) if class_weights is None else np.asarray(class_weights)
  for pred, batch in batches:
    n = len(batch["depth_zbuffer"])
    sizes.append(n)
    up = {k: nearest_np(v.astype(np.float64), H, W) for k, v in pred.items()}
    # segmentation
    y = batch["segment_semantic"]
    valid = y < C
    p = up["segment_semantic"].argmax(-1)
    np.add.at(conf, (y[valid], p[valid]), 1)
    acc.append(((p == y)[valid].mean() if valid.any() else 0.0, valid.sum()))
    logits = up["segment_semantic"]
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    yy = np.where(valid, y, 0)
    nll = -np.take_along_axis(logp, yy[..., None], -1)[..., 0]
    wt = cw[yy] * valid
    err.append((((wt * nll).sum() / wt.sum()) if wt.sum() else 0.0, wt.sum()))
    # normals
    g = batch["normal"].astype(np.float64)
    valid = (g.max(-1) != 255) & (batch["normal_mask"] == 1)
    unit = lambda v: v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
    cos = np.clip((unit(up["normal"]) * unit(g)).sum(-1), -1, 1)[valid]
    cosines.append(cos)
    angles.append(np.degrees(np.arccos(cos)))
    # depth (no mask: label > 3e-5)
    g = batch["depth_zbuffer"].astype(np.float64)
    valid = g > 3e-5
    pd, gd = up["depth_zbuffer"][..., 0][valid], g[valid]
    abs_e.append((np.abs(pd - gd).mean() if valid.any() else 0.0, valid.sum()))
    rel_e.append(((np.abs(pd - gd) / gd).mean() if valid.any() else 0.0, valid.sum()))
    with np.errstate(divide="ignore"):
      r = np.maximum(pd / gd, gd / pd)
    ratios.append(np.where(pd > 0, r, np.inf) if standard else r)
    # keypoints / edges
    for name, out in (("keypoints2d", key_e), ("edge_texture", edge_e)):
      g = batch[name].astype(np.float64)
      valid = g != 255
      e = np.abs(up[name][..., 0] - g)[valid]
      out.append((e.mean() if valid.any() else 0.0, valid.sum()))
  mean = lambda pairs: batch_mean(*zip(*pairs), sizes, standard)
  tp = np.diag(conf)
  union = conf.sum(0) + conf.sum(1) - tp
  used = union > 0 if standard else tp > 0
  angles, ratios = np.concatenate(angles), np.concatenate(ratios)
  return {
      "segment_semantic": {"mIoU": np.mean(tp[used] / union[used]),
                           "Pixel Acc": tp.sum() / conf.sum() if standard else mean(acc),
                           "err": mean(err)},
      "normal": {"Angle Mean": angles.mean(), "Angle Median": np.median(angles),
                 **{f"Angle {t:g}": 100 * np.mean(angles <= t) for t in THRESHOLDS},
                 "cosine_similarity": np.concatenate(cosines).mean()},
      "depth_zbuffer": {"abs_err": mean(abs_e), "rel_err": mean(rel_e),
                        **{n: 100 * np.mean(ratios <= t)
                           for n, t in zip(("sigma_1.25", "sigma_1.25^2", "sigma_1.25^3"),
                                           SIGMAS)}},
      "keypoints2d": {"key_err": mean(key_e)},
      "edge_texture": {"edge_err": mean(edge_e)},
  }


def taskonomy_style(definition, class_weights=None):
  return (mt.Segmentation(channels=C, metric_set="taskonomy", class_weights=class_weights,
                          definition=definition),
          mt.Normal(label_encoding="unit", metric_set="taskonomy", definition=definition))


def assert_metrics(got, want, median_tol=0.005 + 1e-4):
  for task, values in got.items():
    for name, value in values.items():
      tol = median_tol if name == "Angle Median" else 1e-5 * max(1.0, abs(want[task][name]))
      assert abs(value - want[task][name]) <= tol, (task, name, value, want[task][name])


@pytest.mark.parametrize("definition", ["reference", "standard"])
def test_metrics_match_numpy_over_uneven_batches(definition):
  batches = split(make_data(0, 16), [4, 4, 8])
  batches[1][1]["depth_zbuffer"][:] = 0  # a batch with no valid depth pixel is skipped
  weights = np.random.default_rng(1).uniform(0.5, 2.0, C)
  want = reference_np(batches, standard=definition == "standard", class_weights=weights)
  assert_metrics(accumulate(mt.synthetic_tasks(num_classes=C, definition=definition), batches),
                 want)
  assert_metrics(accumulate(taskonomy_style(definition, weights), batches), want)


def test_masked_taskonomy_depth_and_keypoints():
  pred, batch = make_data(2, 6)
  rng = np.random.default_rng(3)
  batch["depth_zbuffer_mask"] = (rng.random((6, H, W)) > 0.3).astype(np.float32)
  batch["depth_zbuffer"][1, :2] = 255
  batch["keypoints2d_mask"] = (rng.random((6, H, W)) > 0.3).astype(np.float32)
  tasks = (mt.Depth(metric_set="taskonomy"), mt.MaskedL1())
  got = accumulate(tasks, [(pred, batch)])
  for task, key in zip(tasks, ("abs_err", "key_err")):
    g = batch[task.name]
    valid = (g != 255) & (batch[task.name + "_mask"] == 1)
    p = nearest_np(pred[task.name].astype(np.float64), H, W)[..., 0]
    np.testing.assert_allclose(got[task.name][key], np.abs(p - g)[valid].mean(), rtol=1e-5)


def test_one_batch_of_32_equals_four_batches_of_8():
  data = make_data(4, 32)
  one, four = [data], split(data, [8] * 4)
  standard = mt.synthetic_tasks(num_classes=C, definition="standard")
  assert_metrics(accumulate(standard, four), accumulate(standard, one), median_tol=1e-9)
  reference = mt.synthetic_tasks(num_classes=C)
  got_one, got_four = accumulate(reference, one), accumulate(reference, four)
  for task, name in [("segment_semantic", "mIoU"), ("normal", "Angle Mean"),
                     ("normal", "Angle Median"), ("normal", "Angle 30"),
                     ("depth_zbuffer", "sigma_1.25")]:
    np.testing.assert_allclose(got_four[task][name], got_one[task][name], rtol=1e-5)
  # Documented batch dependence of the reference definition (Q19).
  assert abs(got_four["depth_zbuffer"]["abs_err"] - got_one["depth_zbuffer"]["abs_err"]) > 1e-6


def test_merge_and_psum_equal_sequential_updates():
  tasks = mt.synthetic_tasks(num_classes=C)
  (p1, b1), (p2, b2) = split(make_data(5, 8), [4, 4])
  upd = jax.jit(lambda s, p, b: mt.metrics.update(tasks, s, p, b))
  zero = mt.metrics.init(tasks)
  sequential = upd(upd(zero, p1, b1), p2, b2)
  merged = mt.metrics.merge(upd(zero, p1, b1), upd(zero, p2, b2))
  stack = lambda a, b: jax.tree.map(lambda x, y: jnp.stack([x, y]), a, b)
  psummed = jax.vmap(lambda p, b: jax.lax.psum(upd(zero, p, b), "devices"),
                     axis_name="devices")(stack(p1, p2), stack(b1, b2))
  psummed = jax.tree.map(lambda x: x[0], psummed)
  for state in (merged, psummed):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), sequential, state)


def test_median_histogram_error_bound():
  pred, batch = make_data(6, 8)
  task = mt.Normal(label_encoding="unit", histogram_bins=180)  # 1 degree bins
  state = jax.jit(task.metric_update)(task.metric_init(), pred["normal"], batch)
  got = task.metric_compute(state)["Angle Median"]
  want = reference_np([(pred, batch)])["normal"]["Angle Median"]
  assert abs(got - want) <= 0.5 + 1e-4


def test_reference_miou_drops_classes_without_true_positives():
  # Class 1 is present but never predicted correctly: the reference (Q18) drops it.
  y = np.array([[[0, 0, 1, 1]]], np.int32)
  logits = np.zeros((1, 1, 4, 2), np.float32)
  logits[..., 0] = 1.0  # always predict class 0
  batch = {"segment_semantic": y}
  for definition, want in [("reference", 0.5), ("standard", 0.25)]:
    task = mt.Segmentation(channels=2, definition=definition)
    state = task.metric_update(task.metric_init(), jnp.asarray(logits), batch)
    assert task.metric_compute(state)["mIoU"] == pytest.approx(want)


def test_empty_state_and_nan_predictions_raise():
  pred, batch = make_data(7, 4)
  for task in mt.synthetic_tasks(num_classes=C) + taskonomy_style("reference"):
    with pytest.raises(ValueError, match="no valid pixel"):
      task.metric_compute(task.metric_init())
    if task.name != "segment_semantic" or task.metric_set == "taskonomy":  # argmax hides NaN
      bad = np.full_like(pred[task.name], np.nan)
      with pytest.raises(ValueError, match="not finite"):
        task.metric_compute(task.metric_update(task.metric_init(), bad, batch))


def test_update_keeps_state_structure_and_dtypes():
  tasks = mt.synthetic_tasks(num_classes=C) + taskonomy_style("reference")
  pred, batch = make_data(8, 4)
  for task in tasks:
    zero = task.metric_init()
    out = jax.eval_shape(task.metric_update, zero, pred[task.name], batch)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), out) == jax.tree.map(
        lambda a: (a.shape, a.dtype), zero), task


def pad(data, n_pad, seed=10):
  """``data`` plus ``n_pad`` padding examples with VALID labels and predictions (weight 0)."""
  pred, batch = data
  extra_pred, extra_batch = make_data(seed, n_pad + 1)  # image 0 of make_data has no valid pixel
  cat = lambda a, b: np.concatenate([a, b[1:]])  # pylint: disable=unnecessary-lambda-assignment
  n = len(batch["depth_zbuffer"])
  padded_batch = {k: cat(v, extra_batch[k]) for k, v in batch.items()}
  padded_batch["example_weight"] = np.r_[np.ones(n), np.zeros(n_pad)].astype(np.float32)
  return {k: cat(v, extra_pred[k]) for k, v in pred.items()}, padded_batch


@pytest.mark.parametrize("definition", ["reference", "standard"])
def test_padded_batches_give_the_metrics_of_the_unpadded_batches(definition):
  batches = split(make_data(11, 11), [4, 4, 3])
  padded = batches[:2] + [pad(batches[2], 1)]
  weights = np.random.default_rng(1).uniform(0.5, 2.0, C)
  for tasks in (mt.synthetic_tasks(num_classes=C, definition=definition),
                taskonomy_style(definition, weights)):
    want, got = accumulate(tasks, batches), accumulate(tasks, padded)
    assert_metrics(got, want, median_tol=1e-6)
    unmasked = {k: v for k, v in padded[2][1].items() if k != "example_weight"}
    # The padding examples do have valid pixels: only their weight keeps them out.
    assert accumulate(tasks, batches[:2] + [(padded[2][0], unmasked)]) != want


def test_padding_examples_leave_losses_and_pooled_denominators_alone():
  pred, batch = make_data(12, 5)
  ppred, pbatch = pad((pred, batch), 3)
  for task in mt.synthetic_tasks(num_classes=C):
    for reduction in ("image", "pooled"):
      want = task.loss(jnp.asarray(pred[task.name]), batch, reduction)
      got = task.loss(jnp.asarray(ppred[task.name]), pbatch, reduction)
      np.testing.assert_array_equal(got[:5], want)  # real examples: bit-identical
      np.testing.assert_array_equal(got[5:], 0)
      np.testing.assert_allclose(mt.base.batch_mean(got, pbatch), jnp.mean(want), rtol=1e-6)


def normal_state(seed, n):
  pred, batch = make_data(seed, n)
  task = mt.Normal(label_encoding="unit")
  return task, jax.jit(task.metric_update)(task.metric_init(), pred["normal"], batch)


def test_int32_counters_saturate_on_the_device_and_sum_in_int64_on_the_host():
  task, one = normal_state(9, 4)
  k = int(one["count"])
  update = jax.jit(task.metric_update)
  pred, batch = make_data(9, 4)
  below = update(dict(one, count=jnp.int32(2**31 - 2 - k)), pred["normal"], batch)
  assert int(below["count"]) == 2**31 - 2  # the largest count that still computes
  task.metric_compute(below)
  near = dict(one, count=jnp.int32(2**31 - 1 - k // 2))
  merged = mt.metrics.merge({"n": near}, {"n": one})["n"]
  for crossed in (update(near, pred["normal"], batch), merged):
    assert int(crossed["count"]) == 2**31 - 1  # saturated, not wrapped to a negative count
    with pytest.raises(ValueError, match="int32 limit"):
      task.metric_compute(crossed)
  acc = mt.metrics.Accumulator([task])
  acc.add({"normal": near})
  acc.add({"normal": one})
  count = acc.state["normal"]["count"]
  assert count.dtype == np.int64 and int(count) == 2**31 - 1 - k // 2 + k
  angle_sum = float(near["angle_sum"]) + float(one["angle_sum"])
  assert acc.compute()["normal"]["Angle Mean"] == pytest.approx(angle_sum / int(count), rel=1e-12)


def accumulate_exact(tasks, batches, sample_budget=mt.metrics.SAMPLE_BUDGET):
  step = jax.jit(lambda p, b: (mt.metrics.update(tasks, mt.metrics.init(tasks), p, b),
                               mt.metrics.samples(tasks, p, b)))
  acc = mt.metrics.Accumulator(tasks, sample_budget)
  for pred, batch in batches:
    acc.add(*step(pred, batch))
  return acc


def test_angle_median_is_exact_within_the_sample_budget_and_within_1e4_beyond():
  batches = split(make_data(13, 12), [4, 4, 4])
  want = reference_np(batches)["normal"]["Angle Median"]
  coarse = (mt.Normal(label_encoding="unit", histogram_bins=180),)  # 1-degree histogram bins
  exact = accumulate_exact(coarse, batches)
  assert abs(exact.compute()["normal"]["Angle Median"] - want) < 1e-5
  # Even count: the mean of the two middle angles (np.median's definition).
  assert exact.state["normal"]["angle_samples"].values().size % 2 == 0
  fine = (mt.Normal(label_encoding="unit"),)
  n = int(exact.state["normal"]["count"])
  fallback = accumulate_exact(fine, batches, sample_budget=n - 1)
  assert fallback.state["normal"]["angle_samples"].values() is None
  assert abs(fallback.compute()["normal"]["Angle Median"] - want) <= 1e-4
  # Exact states merge like the sums (e.g. from two hosts); over budget, they fall back.
  a, b = accumulate_exact(coarse, batches[:1]), accumulate_exact(coarse, batches[1:])
  merged = mt.metrics.merge(a.state, b.state)
  assert mt.metrics.compute(coarse, merged)["normal"] == exact.compute()["normal"]
  small = accumulate_exact(coarse, batches[:1], sample_budget=n - 1)
  assert mt.metrics.merge(small.state, b.state)["normal"]["angle_samples"].values() is None


@pytest.mark.parametrize("counts_dtype", [np.int32, np.float32])
def test_mean_state_on_numpy_equals_the_traced_terms(counts_dtype):
  """The host path (NumPy in, NumPy out: the worst-case search) gives the device path's terms."""
  rng = np.random.default_rng(0)
  for size, zero in ((None, False), (np.float32(5), False), (None, True)):
    sums = rng.uniform(0, 50, 7).astype(np.float32)
    counts = (np.zeros(7) if zero else rng.integers(1, 90, 7)).astype(counts_dtype)
    host = mt.base.mean_state("m", sums, counts, size)
    device = jax.jit(mt.base.mean_state, static_argnums=0)("m", sums, counts, size)
    assert set(host) == set(device)
    for k, v in host.items():
      assert isinstance(v, np.generic) and v.dtype == device[k].dtype, k
      np.testing.assert_allclose(v, device[k], rtol=1e-6, err_msg=k)
    assert (host["m/batch_weight"] == 0) == zero
