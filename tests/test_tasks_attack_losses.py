"""Attack losses against NumPy transcriptions of their papers on hand-made predictions."""

import functools
import types
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial import distance

from mtajax import attacks
from mtajax import directions
from mtajax import tasks
from mtajax import testing
from mtajax.tasks import attack_losses as AL

RNG = np.random.default_rng(0)
B, H, W, C = 2, 3, 4, 5
LOGITS = RNG.normal(size=(B, H, W, C)).astype(np.float32) * 2
CLEAN = RNG.normal(size=(B, H, W, C)).astype(np.float32)
LABELS = RNG.integers(0, C, size=(B, H, W)).astype(np.int32)
LABELS[0, 0, :2] = 255
LABELS[1, 1, 1] = int(np.argmax(LOGITS[1, 1, 1]))  # at least one correct pixel
CLASS_W = (0.5, 1.0, 2.0, 1.5, 0.25)


class Ctx(NamedTuple):
  step: Any
  num_steps: int
  clean: Any


def seg(class_weights=None):
  return tasks.Segmentation(channels=C, class_weights=class_weights)


def np_seg_terms(class_weights):
  valid = LABELS != 255
  y = np.where(valid, LABELS, 0)
  z = LOGITS.astype(np.float64)
  logp = z - z.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  ce = -np.take_along_axis(logp, y[..., None], -1)[..., 0]
  cw = np.ones(C) if class_weights is None else np.asarray(class_weights)
  den = valid * cw[y]
  correct = (z.argmax(-1) == y).astype(np.float64)
  return y, np.exp(logp), ce, den, correct


def run(name, task, pred, batch, ctx):
  num, den = AL.get(name)(task, jnp.asarray(pred), batch, ctx)
  return np.asarray(num, np.float64), np.asarray(den, np.float64)


@pytest.mark.parametrize("class_weights", [None, CLASS_W])
@pytest.mark.parametrize("step", [0, 3, 9])
def test_segmentation_losses_against_numpy(class_weights, step):
  task, batch = seg(class_weights), {"segment_semantic": jnp.asarray(LABELS)}
  ctx = Ctx(jnp.int32(step), 10, {"segment_semantic": jnp.asarray(CLEAN)})
  y, p, ce, den, correct = np_seg_terms(class_weights)
  lam = step / 20  # SegPGD: (t - 1) / (2T) with t = step + 1, T = 10
  cos = np.take_along_axis(p, y[..., None], -1)[..., 0] / np.linalg.norm(p, axis=-1)
  q = np.exp(CLEAN - CLEAN.max(-1, keepdims=True))
  q /= q.sum(-1, keepdims=True)
  js_clean = np.array([[[distance.jensenshannon(p[b, i, j], q[b, i, j]) ** 2 for j in range(W)]
                        for i in range(H)] for b in range(B)])
  onehot = np.eye(C)[y]
  js_label = np.array([[[distance.jensenshannon(p[b, i, j], onehot[b, i, j]) ** 2
                         for j in range(W)] for i in range(H)] for b in range(B)])
  want = {
      "default": ce * den,
      "segpgd": ce * den * ((1 - lam) * correct + lam * (1 - correct)),
      "cospgd": ce * den * cos,
      "masked_ce": ce * den * correct,
      "js": js_clean * den,
      "js_label": js_label * den,
      "js_relative": js_clean * den,
  }
  for name, num in want.items():
    got_num, got_den = run(name, task, LOGITS, batch, ctx)
    np.testing.assert_allclose(got_num, num, rtol=2e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(got_den, den, rtol=1e-6, err_msg=name)


def _rotated(g, degrees, rng):
  """Vectors at ``degrees`` from the unit vectors g (random magnitudes and rotation planes)."""
  u = rng.normal(size=g.shape)
  u -= np.sum(u * g, -1, keepdims=True) * g
  u /= np.linalg.norm(u, axis=-1, keepdims=True)
  t = np.radians(degrees)[..., None]
  return (np.cos(t) * g + np.sin(t) * u) * rng.uniform(0.5, 2, g.shape[:-1] + (1,))


def regression_case(kind):
  """(task, pred, label batch, clean pred, valid, per-pixel error terms) of hand-made maps."""
  rng = np.random.default_rng(7)
  factors = np.resize([0.7, 0.9, 1.1, 1.3, 1.5, 1.8, 2.2, -0.5, 1.0], (B, H, W))
  if kind == "depth":
    g = rng.uniform(1, 4, (B, H, W))
    g[0, 0, :2] = 0.0  # invalid (<= min_depth)
    p = (g + (g == 0)) * factors
    valid = g > 3e-5
    ratio = np.where(p > 0, np.maximum(p / np.where(valid, g, 1), g / np.where(p > 0, p, 1)),
                     np.inf)
    hits = [ratio <= t for t in (1.25, 1.25**2, 1.25**3)]
    f = 3e-5
    rel = np.abs(np.log(np.maximum(p, f)) - np.log(np.maximum(g, f)))
    return tasks.Depth(), p[..., None], {"depth_zbuffer": g}, valid, np.abs(p - g), hits, rel
  if kind == "normal":
    g = rng.normal(size=(B, H, W, 3))
    g /= np.linalg.norm(g, axis=-1, keepdims=True)
    degrees = np.resize([5.0, 15.0, 25.0, 40.0, 90.0, 170.0, 1.0], (B, H, W))
    p = _rotated(g, degrees, rng)
    g[1, 2, 3] = 255.0  # invalid
    valid = g.max(-1) < 255
    cos = np.sum(p * g, -1) / np.linalg.norm(p, axis=-1)
    angle = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    hits = [angle <= t for t in (11.25, 22.5, 30.0)]
    return (tasks.Normal(label_encoding="unit"), p, {"normal": g}, valid, 1 - cos, hits,
            np.radians(angle))
  g = rng.uniform(0, 1, (B, H, W))
  g[1, 0, 0] = 255.0  # invalid
  valid = g != 255
  p = g + (factors - 1) * 0.4
  scale = np.array([np.abs(g[b][valid[b]]).mean() for b in range(B)])[:, None, None]
  err = np.abs(p - g)
  hits = [err <= (t - 1) * scale for t in (1.25, 1.25**2, 1.25**3)]
  return (tasks.MaskedL1(name="keypoints2d"), p[..., None], {"keypoints2d": g}, valid, err, hits,
          err / (np.abs(g) + scale))


@pytest.mark.parametrize("kind", ["depth", "normal", "keypoints"])
@pytest.mark.parametrize("step", [0, 7])
def test_regression_losses_against_numpy(kind, step):
  task, pred, labels, valid, err, hits, rel = regression_case(kind)
  clean = pred + np.random.default_rng(8).normal(size=pred.shape)
  batch = {k: jnp.asarray(v, jnp.float32) for k, v in labels.items()}
  ctx = Ctx(jnp.int32(step), 10, {task.name: jnp.asarray(clean, jnp.float32)})
  c = np.mean(hits, axis=0)
  assert len(np.unique(c[valid])) >= 3  # the hand-made maps cover several success levels
  lam = step / 20
  v = valid.astype(np.float64)
  if kind == "normal":
    unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)
    to_clean = 1 - np.sum(unit(pred) * unit(clean), -1)
  else:
    to_clean = np.abs(pred - clean)[..., 0]
  want = {"default": err, "segpgd": err * ((1 - lam) * c + lam * (1 - c)), "masked_ce": err * c,
          "js": to_clean, "js_label": err, "relative": rel, "js_relative": rel}
  got_c = np.asarray(AL.success(task, jnp.asarray(pred, jnp.float32), batch))
  np.testing.assert_allclose(got_c[valid], c[valid], rtol=1e-6)
  for name, num in want.items():
    got_num, got_den = run(name, task, pred.astype(np.float32), batch, ctx)
    np.testing.assert_allclose(got_num, num * v, rtol=2e-5, atol=2e-6, err_msg=name)
    np.testing.assert_array_equal(got_den, v, err_msg=name)


def test_segpgd_step_is_traced_from_the_attack_loop():
  task, batch = seg(), {"segment_semantic": jnp.asarray(LABELS)}
  f = jax.jit(lambda s: AL.segpgd(task, jnp.asarray(LOGITS), batch, Ctx(s, 10, None))[0].sum())
  values = [float(f(jnp.int32(s))) for s in range(3)]
  assert values[0] != values[1] != values[2]


def test_cospgd_regression_weights_against_numpy():
  normals = RNG.normal(size=(B, H, W, 3)).astype(np.float32)
  pred_n = RNG.normal(size=(B, H, W, 3)).astype(np.float32)
  normals[1, 2, 3] = 255.0  # invalid
  task_n = tasks.Normal(label_encoding="unit")
  got, _ = run("cospgd", task_n, pred_n, {"normal": jnp.asarray(normals)}, None)
  unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)
  cos = np.sum(unit(pred_n.astype(np.float64)) * unit(normals.astype(np.float64)), -1)
  valid = normals.max(-1) < 255
  np.testing.assert_allclose(got, valid * (1 - cos) * (1 + cos) / 2, rtol=1e-5, atol=1e-6)

  depth = RNG.uniform(1, 5, size=(B, H, W)).astype(np.float32)
  depth[0] = 0.0  # image 0 has no valid pixel (depth <= min_depth)
  pred_d = RNG.uniform(0, 6, size=(B, H, W, 1)).astype(np.float32)
  got, _ = run("cospgd", tasks.Depth(), pred_d, {"depth_zbuffer": jnp.asarray(depth)}, None)
  err = np.abs(pred_d[..., 0] - depth) * (depth > 3e-5)
  mean = err[1].sum() / (depth[1] > 3e-5).sum()
  np.testing.assert_allclose(got[1], err[1] * mean / (mean + err[1]), rtol=1e-5)
  np.testing.assert_array_equal(got[0], 0.0)


def _all_invalid_cases():
  """(loss name, task, pred, batch) with image 0 carrying no valid pixel."""
  seg_labels = LABELS.copy()
  seg_labels[0] = 255
  normals = RNG.normal(size=(B, H, W, 3)).astype(np.float32)
  normals[0] = 255.0
  keypoints = RNG.uniform(size=(B, H, W)).astype(np.float32)
  keypoints[0] = 255.0
  depth = RNG.uniform(1, 5, size=(B, H, W)).astype(np.float32)
  depth[0] = 0.0
  regression = [(tasks.Normal(label_encoding="unit"), {"normal": normals}, 3),
                (tasks.MaskedL1(name="keypoints2d"), {"keypoints2d": keypoints}, 1),
                (tasks.Depth(), {"depth_zbuffer": depth}, 1)]
  cases = [(n, seg(CLASS_W), LOGITS, {"segment_semantic": seg_labels}) for n in AL.names()
           if n != "relative"]
  for task, batch, ch in regression:
    pred = RNG.normal(size=(B, H, W, ch)).astype(np.float32)
    cases += [(n, task, pred, batch) for n in AL.names()]
  return cases


@pytest.mark.parametrize("case", _all_invalid_cases(), ids=lambda c: f"{c[0]}-{c[1].name}")
def test_finite_and_differentiable_without_valid_pixels(case):
  name, task, pred, batch = case
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  ctx = Ctx(jnp.int32(2), 5, {task.name: jnp.asarray(pred) + 0.5})

  def loss(p):
    num, den = AL.get(name)(task, p, batch, ctx)
    return tasks.base.safe_divide(num.sum((1, 2)), den.sum((1, 2)))
  value = np.asarray(loss(jnp.asarray(pred)))
  grad = np.asarray(jax.grad(lambda p: loss(p).sum())(jnp.asarray(pred)))
  assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad))
  assert value[0] == 0 and np.all(grad[0] == 0)
  assert np.any(grad[1] != 0)


def test_errors_name_the_fix():
  with pytest.raises(ValueError, match="unknown attack loss 'nope'; use one of"):
    AL.get("nope")
  for name in ("cospgd", "segpgd", "masked_ce", "js", "js_label"):
    with pytest.raises(ValueError, match=f"'{name}' supports Segmentation, Normal, L1Task tasks, "
                       "not 'mine' .SimpleNamespace.; for it use one of default, e.g."):
      AL.get(name)(types.SimpleNamespace(name="mine"), None, None, None)
  with pytest.raises(ValueError, match="'relative' supports Normal, L1Task tasks, not "
                     "'segment_semantic' .Segmentation.; for it use one of default, segpgd, "
                     "cospgd, masked_ce, js, kl, js_label, js_relative, e.g. attack_loss="):
    AL.relative(seg(), jnp.asarray(LOGITS), {"segment_semantic": jnp.asarray(LABELS)}, None)


def test_js_label_uses_the_task_loss_on_regression():
  task = tasks.Normal(label_encoding="unit")
  pred = jnp.asarray(RNG.normal(size=(B, H, W, 3)), jnp.float32)
  batch = {"normal": jnp.asarray(RNG.normal(size=(B, H, W, 3)), jnp.float32)}
  got = AL.js_label(task, pred, batch, Ctx(jnp.int32(1), 4, {"normal": pred}))
  want = task.pixel_loss(pred, batch)
  np.testing.assert_array_equal(got[0], want[0])
  np.testing.assert_array_equal(got[1], want[1])
  with pytest.raises(ValueError, match="needs the clean predictions"):
    AL.js(seg(), jnp.asarray(LOGITS), {"segment_semantic": jnp.asarray(LABELS)}, None)
  with pytest.raises(ValueError, match="'js' needs the clean predictions of 'normal'"):
    AL.js(task, pred, batch, None)


def test_registry_is_open():
  AL.register("half", lambda task, pred, batch, ctx: tuple(0.5 * v for v in
                                                           task.pixel_loss(pred, batch)))
  assert "half" in AL.names()
  batch = {"segment_semantic": jnp.asarray(LABELS)}
  got = AL.get("half")(seg(), jnp.asarray(LOGITS), batch, None)
  want = AL.get("default")(seg(), jnp.asarray(LOGITS), batch, None)
  np.testing.assert_allclose(got[0], 0.5 * want[0])
  AL._REGISTRY.pop("half")  # pylint: disable=protected-access


@pytest.mark.parametrize("name", ["segpgd", "cospgd", "masked_ce", "js"])
def test_attack_losses_inside_pgd_see_the_loop_context(name):
  """make_loss_fn(attack_loss=...) inside PGD: the attack gets step and clean predictions."""
  key = jax.random.PRNGKey(0)
  params = testing.init(key, 3, width=4)
  labels = testing.random_labels(key, params, 2, 16)
  labels["segment_semantic"] = labels["segment_semantic"].astype(jnp.int32)
  task_list = (tasks.Segmentation(channels=testing.TASK_CHANNELS["segment_semantic"]),
               tasks.Normal(label_encoding="unit"), tasks.Depth(min_depth=-1.0))
  loss_fn = tasks.make_loss_fn(functools.partial(testing.apply, params), task_list, "image",
                               attack_loss=name)
  x = jax.random.uniform(key, (2, 16, 16, 3), minval=-100.0, maxval=100.0)
  result = attacks.pgd(loss_fn, x, labels, direction=directions.gbmta(), eps=8.0,
                       bounds=(-128.0, 128.0), num_steps=3)
  delta = np.asarray(result.x_adv - x)
  assert np.all(np.isfinite(delta)) and 0 < np.abs(delta).max() <= 8.0
  assert np.all(np.isfinite(np.asarray(result.objective)))
  # The loss at x0 with the attack's context equals the registry entry reduced per image.
  ctx = Ctx(jnp.int32(2), 3, loss_fn.init_context(x, labels))
  seg = task_list[0]
  num, den = AL.get(name)(seg, testing.apply(params, x)[seg.name], labels, ctx)
  want = np.asarray(tasks.base.safe_divide(num.sum((1, 2)), den.sum((1, 2))))
  np.testing.assert_allclose(loss_fn(x, labels, context=ctx)[seg.name], want, rtol=1e-5)


def _regression_problem():
  """The toy net with normals, (positive) depth and keypoints heads, labels near its predictions."""
  key = jax.random.PRNGKey(3)
  params = testing.init(key, 4, width=4)

  def predict(params, x):
    out = testing.apply(params, x)
    return {"normal": out["normal"], "depth_zbuffer": jnp.exp(out["depth_zbuffer"]),
            "keypoints2d": out["keypoints2d"]}
  x = jax.random.uniform(key, (2, 16, 16, 3), minval=-100.0, maxval=100.0)
  clean = jax.tree.map(np.asarray, predict(params, x))
  rng = np.random.default_rng(3)
  kp = clean["keypoints2d"][..., 0]
  normal = clean["normal"] + rng.normal(0, 1e-3, clean["normal"].shape)  # some outputs are 0
  normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
  labels = {"normal": normal + rng.normal(0, 0.1, normal.shape),
            "depth_zbuffer": clean["depth_zbuffer"][..., 0] * rng.uniform(0.95, 1.05, kp.shape),
            "keypoints2d": kp + rng.normal(0, 0.05 * kp.std(), kp.shape)}
  task_list = (tasks.Normal(label_encoding="unit"), tasks.Depth(),
               tasks.MaskedL1(name="keypoints2d"))
  return functools.partial(predict, params), x, jax.tree.map(jnp.float32, labels), task_list


@pytest.mark.parametrize("name", ["segpgd", "masked_ce", "js", "relative"])
def test_pgd_with_each_regression_loss_raises_the_task_errors(name):
  """Three PGD steps with the loss on every head raise each task's own error metric."""
  predict, x, labels, task_list = _regression_problem()
  loss_fn = tasks.make_loss_fn(predict, task_list, "image", attack_loss=name)
  result = attacks.pgd(loss_fn, x, labels, direction=directions.total(), eps=8.0,
                       bounds=(-128.0, 128.0), num_steps=3, random_start=name == "js",
                       key=jax.random.PRNGKey(1))
  errors = {"normal": "Angle Mean", "depth_zbuffer": "abs_err", "keypoints2d": "key_err"}
  for t in task_list:
    metric = lambda x: t.metric_compute(t.metric_update(t.metric_init(), predict(x)[t.name],
                                                        labels))[errors[t.name]]
    before, after = metric(x), metric(result.x_adv)
    assert after > 1.1 * before, (t.name, before, after)  # measured: normals ≥ 1.16×, others 20×
