"""Helpers shared by several test modules: toy problems and models, task-loss batches with NumPy
reference criteria, synthetic records, reference tables.

Plain functions and constants; the pytest fixtures built on them are registered in conftest.py.
"""

import collections
import contextlib
import math
import pathlib
import shutil

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from configs import quickstart
from mtajax import models
from mtajax import run
from mtajax import tasks as mt
from mtajax import testing
from mtajax.models.heads import ConvHead
from mtajax.models.layers import BatchNorm, conv
from mtajax.train import config as config_lib

# The toy net of mtajax.testing for the attack tests (fixture `setup`): input scale and box.
EPS = 8.0
BOUNDS = (np.array([-104.0, -116.7, -122.7], np.float32), np.array([151.0, 138.3, 132.3], np.float32))


def clip_proj(x, x0, eps):
  """Projection onto the L∞ ball of radius eps around x0 and the box, in NumPy."""
  return np.clip(np.clip(x, x0 - eps, x0 + eps), BOUNDS[0], BOUNDS[1])


def attack_setup():
  """Images of the box's scale and labels of the toy net: (x, (params, labels))."""
  key = jax.random.PRNGKey(0)
  params = testing.init(key, 3, width=4)
  labels = (params, testing.random_labels(key, params, 3, 8))
  x = jax.random.uniform(key, (3, 8, 8, 3), minval=-100.0, maxval=100.0)
  return x, labels


# A cheap two-task loss whose first task is a masked mean (attack core and threat-model tests).
# The directions' analytic toy losses: L_a = Σ w·x² + 1 and L_b = Σ c·x + 10 per sample (B, H, W, C).
W = np.linspace(0.5, 2.0, 2 * 3 * 4).reshape(2, 3, 4).astype(np.float32)
C = np.linspace(-1.0, 1.0, 2 * 3 * 4).reshape(2, 3, 4).astype(np.float32)


def toy_loss(x, labels):
  del labels
  return {"a": jnp.sum(W * x ** 2, axis=(1, 2, 3)) + 1.0,
          "b": jnp.sum(C * x, axis=(1, 2, 3)) + 10.0}


def toy_grads(x):
  """Analytic per-sample losses and gradients of the batch means."""
  b = x.shape[0]
  la = (W * x ** 2).sum((1, 2, 3)) + 1.0
  lb = (C * x).sum((1, 2, 3)) + 10.0
  return la, lb, 2 * W * x / b, np.broadcast_to(C / b, x.shape)


def masked_loss(x, labels):
  """Two tasks on a cheap net; the first a masked mean (0 for an image with an empty mask)."""
  m, target, mask = labels["m"], labels["target"], labels["mask"]
  h = jnp.tanh(x / 50.0) @ m  # (B, H, W, 2)
  err = jnp.abs(h[..., 0] - target)
  count = jnp.sum(mask, axis=(1, 2))
  masked = jnp.sum(err * mask, axis=(1, 2)) / jnp.maximum(count, 1.0)
  return {"masked": masked, "plain": jnp.mean((h[..., 1] + target) ** 2, axis=(1, 2))}


def masked_problem(b=3, hw=4, seed=0, empty=(0,)):
  """Inputs and labels of masked_loss; the images in `empty` have an empty mask."""
  rng = np.random.default_rng(seed)
  x = rng.uniform(-1, 1, (b, hw, hw, 3)).astype(np.float32)
  mask = np.ones((b, hw, hw), np.float32)
  mask[list(empty)] = 0.0
  labels = {"m": rng.normal(size=(3, 2)).astype(np.float32),
            "target": rng.normal(size=(b, hw, hw)).astype(np.float32), "mask": mask}
  return x, labels


# The plain-JAX multi-task problem of the robust, evaluation and host-loop tests.
S, B, N = 16, 4, 8  # image size, batch size, images


def problem():
  """A random plain-JAX net (mtajax.testing) with labels near its own clean predictions."""
  params = testing.init(jax.random.key(0), 3, width=4)
  rng = np.random.default_rng(0)
  x = rng.uniform(-100, 100, (N, S, S, 3)).astype(np.float32)
  pred = testing.apply(params, jnp.asarray(x))
  seg = np.asarray(jnp.argmax(pred["segment_semantic"], -1)).astype(np.int32)
  seg[:, 0] = 255  # ignored pixels
  labels = {"segment_semantic": seg,
            "normal": np.asarray(pred["normal"]) + rng.normal(0, .3, (N, S // 4, S // 4, 3)),
            "depth_zbuffer": np.abs(np.asarray(pred["depth_zbuffer"][..., 0])) + 0.5}
  labels = {k: v.astype(np.int32 if k == "segment_semantic" else np.float32)
            for k, v in labels.items()}
  batches = [{"image": x[i:i + B], **{k: v[i:i + B] for k, v in labels.items()}}
             for i in range(0, N, B)]
  tasks = (mt.Segmentation(channels=13), mt.Normal(label_encoding="unit"), mt.Depth())
  return testing.apply, params, batches, tasks



# The masking-check tests: a linear multi-task model (its attacks converge in a few steps) and the
# same model behind a straight rounding of its input (zero input gradients: a masked gradient).
LINEAR_CHANNELS = {"segment_semantic": 13, "normal": 3, "depth_zbuffer": 1}


def linear(params, x):
  """4x4 average pooling, then one linear map per task."""
  b, hh, ww, c = x.shape
  pooled = x.reshape(b, hh // 4, 4, ww // 4, 4, c).mean((2, 4)) / 64.0
  return {t: pooled @ m for t, m in params.items()}


def quantised(params, x):
  """``linear`` of the input rounded to multiples of 4."""
  return linear(params, jnp.round(x / 4) * 4)


def linear_problem():
  """``(linear, params, batches, tasks)``: the images of ``problem``, labels near the clean
  predictions."""
  _, _, batches, tasks = problem()
  rng = np.random.default_rng(0)
  params = {t: jnp.asarray(rng.normal(size=(3, c)).astype(np.float32))
            for t, c in LINEAR_CHANNELS.items()}
  x = np.concatenate([b["image"] for b in batches])
  pred = {k: np.asarray(v) for k, v in linear(params, jnp.asarray(x)).items()}
  labels = {"segment_semantic": pred["segment_semantic"].argmax(-1).astype(np.int32),
            "normal": (pred["normal"] + rng.normal(0, .3, pred["normal"].shape)).astype(np.float32),
            "depth_zbuffer": (np.abs(pred["depth_zbuffer"][..., 0]) + 0.5).astype(np.float32)}
  batches = [{"image": x[i:i + B], **{k: v[i:i + B] for k, v in labels.items()}}
             for i in range(0, N, B)]
  return linear, params, batches, tasks

# The task-loss tests: labels of B images at H×W (B as above) and predictions at h×w, with NumPy
# transcriptions of the reference criteria (spec §3).
H, W, h, w = 13, 11, 5, 4
TOL = dict(rtol=1e-5, atol=1e-6)


def switched_problem():
  """A random plain-JAX net (mtajax.testing) with labels near its clean predictions; one batch
  whose images ignore different numbers of pixels, so per-image and pooled losses differ."""
  predict, params, batches, tasks = problem()
  batch = dict(batches[0])
  seg = batch["segment_semantic"].copy()
  for i in range(len(seg)):
    seg[i, :1 + 2 * i] = 255
  return predict, params, {**batch, "segment_semantic": seg}, tasks


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
  """Random predictions (B, h, w, channels)."""
  return np.random.default_rng(seed).normal(size=(B, h, w, channels)).astype(np.float32)


def reduce_np(num, den):
  """Reference 'none' (per image) and 'mean' (batch-pooled) from per-pixel numerator/weights."""
  per_image = np.array([n[d > 0].sum() / d.sum() if d.sum() > 0 else 0.0
                        for n, d in zip(num, den)])
  pooled = num.sum() / den.sum()
  return per_image, pooled


def check(task, pred, batch, want):
  """The task's jitted per-image and pooled losses and valid counts against want (reduce_np's)."""
  per_image, pooled = want
  loss = jax.jit(task.loss, static_argnums=2)
  got_image = np.asarray(loss(pred, batch, "image"))
  got_pooled = np.asarray(loss(pred, batch, "pooled"))
  np.testing.assert_allclose(got_image, per_image, **TOL)
  np.testing.assert_allclose(got_pooled.mean(), pooled, **TOL)
  assert np.all(np.isfinite(got_image)) and got_image[0] == 0.0
  counts = np.asarray(task.valid_count(pred.shape, batch))
  assert counts[0] == 0 and np.all(counts[1:] > 0)


def l1_np(pred, g, valid):
  """The reference L1 criterion on the valid pixels."""
  return reduce_np(np.abs(pred[..., 0] - g) * valid, valid.astype(np.float64))


# Segmentation labels out of range or of another size (segmentation and resize tests).
SEG = mt.Segmentation(channels=5)


def seg_problem(bad_value=None, hw=4):
  """Predictions (3, 4, 4, 5) and hw×hw labels for SEG; bad_value at a pixel and in image 2."""
  rng = np.random.default_rng(0)
  pred = jnp.asarray(rng.normal(size=(3, 4, 4, 5)), jnp.float32)
  y = rng.integers(0, 5, (3, hw, hw)).astype(np.int32)
  y[0, 0, 0] = 255  # ignored: fine
  if bad_value is not None:
    y[1, 1, 1] = bad_value
    y[2] = bad_value  # every pixel out of range
  return pred, {"segment_semantic": jnp.asarray(y)}


# The branched-model tests' toy blocks, model and tasks (branched, pure and build tests).
CALLS = collections.Counter()  # calls per Tiny instance (id)
TOY_TASKS = {"segment_semantic": 5, "normal": 3, "depth_zbuffer": 1}


class Tiny(nnx.Module):
  """conv1×1 + BN + tanh; counts its calls."""

  def __init__(self, *, rngs):
    self.conv = conv(4, 4, 1, kernel_init=nnx.initializers.normal(0.5), rngs=rngs)
    self.bn = BatchNorm(4, rngs=rngs)

  def __call__(self, x):
    CALLS[id(self)] += 1
    return jnp.tanh(self.bn(self.conv(x)))


def tiny_model(layout, *, identical_copies=True, seed=0):
  """A BranchedModel of five Tiny blocks and a ConvHead per task of TOY_TASKS."""
  heads = {name: lambda rngs, c=c: ConvHead(4, c, hidden=4, rngs=rngs)
           for name, c in TOY_TASKS.items()}
  return models.BranchedModel([Tiny] * 5, layout, heads, identical_copies=identical_copies,
                         rngs=nnx.Rngs(seed))


def random_x(shape=(2, 6, 6, 4), seed=0):
  """A standard-normal float32 input."""
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


# Paper Table 16 (NYUv2, T=3) and Table 17 (Tiny-Taskonomy, T=5): index -> layout as printed.
PAPER_T3 = {
    2: "[[{0}, {2}, {1}], [{0}, {2}, {1}], [{0}, {2}, {1}], [{0}, {2}, {1}], [{0}, {2}, {1}]]",
    9: "[[{1}, {0, 2}], [{1}, {0, 2}], [{1}, {2}, {0}], [{1}, {2}, {0}], [{1}, {2}, {0}]]",
    14: "[[{2}, {0, 1}], [{2}, {0, 1}], [{2}, {1}, {0}], [{2}, {1}, {0}], [{2}, {1}, {0}]]",
    4: "[[{1, 2}, {0}], [{1, 2}, {0}], [{0}, {2}, {1}], [{0}, {2}, {1}], [{0}, {2}, {1}]]",
    23: "[[{0, 1, 2}], [{1}, {0, 2}], [{1}, {2}, {0}], [{1}, {2}, {0}], [{1}, {2}, {0}]]",
    10: "[[{1}, {0, 2}], [{1}, {0, 2}], [{1}, {0, 2}], [{1}, {2}, {0}], [{1}, {2}, {0}]]",
    5: "[[{1, 2}, {0}], [{1, 2}, {0}], [{1, 2}, {0}], [{0}, {2}, {1}], [{0}, {2}, {1}]]",
    28: "[[{0, 1, 2}], [{2}, {0, 1}], [{2}, {0, 1}], [{2}, {1}, {0}], [{2}, {1}, {0}]]",
    38: "[[{0, 1, 2}], [{0, 1, 2}], [{2}, {0, 1}], [{2}, {1}, {0}], [{2}, {1}, {0}]]",
    41: "[[{0, 1, 2}], [{0, 1, 2}], [{0, 1, 2}], [{0}, {2}, {1}], [{0}, {2}, {1}]]",
    33: "[[{0, 1, 2}], [{0, 1, 2}], [{1, 2}, {0}], [{1, 2}, {0}], [{0}, {2}, {1}]]",
    39: "[[{0, 1, 2}], [{0, 1, 2}], [{2}, {0, 1}], [{2}, {0, 1}], [{2}, {1}, {0}]]",
    42: "[[{0, 1, 2}], [{0, 1, 2}], [{0, 1, 2}], [{1, 2}, {0}], [{0}, {2}, {1}]]",
    44: "[[{0, 1, 2}], [{0, 1, 2}], [{0, 1, 2}], [{1}, {0, 2}], [{1}, {2}, {0}]]",
    48: "[[{0, 1, 2}], [{0, 1, 2}], [{0, 1, 2}], [{0, 1, 2}], [{0}, {2}, {1}]]",
    26: "[[{0, 1, 2}], [{2}, {0, 1}], [{2}, {0, 1}], [{2}, {0, 1}], [{2}, {0, 1}]]",
    17: "[[{0, 1, 2}], [{1, 2}, {0}], [{1, 2}, {0}], [{1, 2}, {0}], [{1, 2}, {0}]]",
    34: "[[{0, 1, 2}], [{0, 1, 2}], [{1}, {0, 2}], [{1}, {0, 2}], [{1}, {0, 2}]]",
    43: "[[{0, 1, 2}], [{0, 1, 2}], [{0, 1, 2}], [{1}, {0, 2}], [{1}, {0, 2}]]",
    49: "[[{0, 1, 2}], [{0, 1, 2}], [{0, 1, 2}], [{0, 1, 2}], [{1}, {0, 2}]]",
    0: "[[{0, 1, 2}], [{0, 1, 2}], [{0, 1, 2}], [{0, 1, 2}], [{0, 1, 2}]]",
}
PAPER_T5 = {
    4: "[[{0}, {1}, {2}, {4}, {3}], [{0}, {1}, {2}, {4}, {3}], [{0}, {1}, {2}, {4}, {3}], "
       "[{0}, {1}, {2}, {4}, {3}], [{0}, {1}, {2}, {4}, {3}]]",
    190: "[[{0}, {3}, {1, 2, 4}], [{0}, {3}, {4}, {1, 2}], [{0}, {3}, {4}, {1, 2}], "
         "[{0}, {3}, {4}, {2}, {1}], [{0}, {3}, {4}, {2}, {1}]]",
    348: "[[{1, 2, 3, 4}, {0}], [{0}, {1, 2}, {4}, {3}], [{0}, {1, 2}, {4}, {3}], "
         "[{0}, {4}, {3}, {2}, {1}], [{0}, {4}, {3}, {2}, {1}]]",
    200: "[[{0}, {3}, {1, 2, 4}], [{0}, {3}, {1, 2, 4}], [{0}, {3}, {4}, {1, 2}], "
         "[{0}, {3}, {4}, {2}, {1}], [{0}, {3}, {4}, {2}, {1}]]",
    469: "[[{1, 2, 3, 4}, {0}], [{1, 2, 3, 4}, {0}], [{0}, {1, 2}, {4}, {3}], "
         "[{0}, {4}, {3}, {2}, {1}], [{0}, {4}, {3}, {2}, {1}]]",
    358: "[[{1, 2, 3, 4}, {0}], [{0}, {3, 4}, {1, 2}], [{0}, {3, 4}, {1, 2}], "
         "[{0}, {4}, {3}, {2}, {1}], [{0}, {4}, {3}, {2}, {1}]]",
    481: "[[{1, 2, 3, 4}, {0}], [{1, 2, 3, 4}, {0}], [{0}, {3}, {1, 2, 4}], "
         "[{0}, {3}, {1}, {4}, {2}], [{0}, {3}, {1}, {4}, {2}]]",
    191: "[[{0}, {3}, {1, 2, 4}], [{0}, {3}, {4}, {1, 2}], [{0}, {3}, {4}, {1, 2}], "
         "[{0}, {3}, {4}, {1, 2}], [{0}, {3}, {4}, {2}, {1}]]",
    959: "[[{1, 2, 4}, {0, 3}], [{0, 3}, {4}, {1, 2}], [{0, 3}, {4}, {1, 2}], "
         "[{0, 3}, {4}, {2}, {1}], [{4}, {2}, {1}, {3}, {0}]]",
    958: "[[{1, 2, 4}, {0, 3}], [{0, 3}, {4}, {1, 2}], [{0, 3}, {4}, {1, 2}], "
         "[{0, 3}, {4}, {2}, {1}], [{0, 3}, {4}, {2}, {1}]]",
    1020: "[[{1, 2, 4}, {0, 3}], [{1, 2, 4}, {0, 3}], [{0, 3}, {4}, {1, 2}], "
          "[{0, 3}, {4}, {2}, {1}], [{0, 3}, {4}, {2}, {1}]]",
    1043: "[[{1, 2, 4}, {0, 3}], [{1, 2, 4}, {0, 3}], [{1, 2, 4}, {0, 3}], "
          "[{0, 3}, {2, 4}, {1}], [{2, 4}, {1}, {3}, {0}]]",
    1037: "[[{1, 2, 4}, {0, 3}], [{1, 2, 4}, {0, 3}], [{1, 2, 4}, {0, 3}], "
          "[{0, 3}, {2, 4}, {1}], [{0, 3}, {2, 4}, {1}]]",
    0: "[[{0, 1, 2, 3, 4}], [{0, 1, 2, 3, 4}], [{0, 1, 2, 3, 4}], [{0, 1, 2, 3, 4}], "
       "[{0, 1, 2, 3, 4}]]",
}


# Synthetic records with known ARPs for the report tests.
TASKS = ("segment_semantic", "normal", "depth_zbuffer")
LAYOUTS = {
    "as": ("[[{0, 1, 2}], [{0, 1, 2}], [{0, 1, 2}], [{0, 1, 2}], [{0, 1, 2}]]", 5, None),
    "mid": ("[[{0, 1, 2}], [{0, 1, 2}], [{0}, {1, 2}], [{0}, {1, 2}], [{0}, {1}, {2}]]", 2, 41),
    "ind": ("[[{0}, {1}, {2}], [{0}, {1}, {2}], [{0}, {1}, {2}], [{0}, {1}, {2}], "
            "[{0}, {1}, {2}]]", 0, None),
}
ATTACK_SCALE = {"pgd": 1.0, "apgd": 1.1}
SHARED = {"total": [50.0, 20.0, 30.0], "sign_total": [40.0, 30.0, 30.0],
          "gbmta": [45.0, 40.0, 35.0]}


def share(level: int) -> float:
  """Known transferability of every Single-x on a model at this sharing level."""
  return 0.1 + 0.1 * level


def per_task(level, attack, direction, eps, shared=SHARED, share_fn=share):
  """Single-x: the target at 60, every other task at 60·share (so TR = share exactly)."""
  if direction.startswith("single_"):
    target = direction[len("single_"):]
    values = [60.0 if t == target else 60.0 * share_fn(level) for t in TASKS]
  else:
    values = shared[direction]
  scale = ATTACK_SCALE[attack] * eps / 8
  return {t: v * scale for t, v in zip(TASKS, values)}


def record(model, attack, direction, eps, adv_training="none", at_scale=1.0, **kw):
  layout, level, idx = LAYOUTS[model.split("_")[0]]
  rec = {"key": f"{model}|{attack}|{direction}|{eps}", "model": model, "dataset": "synthetic",
         "backbone": "small", "layout_idx": idx, "layout": layout, "sharing_level": level,
         "adv_training": adv_training, "attack": attack, "direction": direction,
         "eps": float(eps), "num_steps": 10, "tasks": list(TASKS), "metrics": {}, "losses": {},
         "arp": None, "arp_per_task": None, "config_hash": "h", "devices": 1, "global_batch": 4,
         "per_device_batch": 4, "time_s": 0.1}
  if attack != "clean":
    arps = {t: v * at_scale for t, v in per_task(level, attack, direction, eps, **kw).items()}
    rec["arp_per_task"] = arps
    rec["arp"] = float(np.mean(list(arps.values())))
  return rec


DIRECTIONS = tuple(f"single_{t}" for t in TASKS) + ("total", "sign_total", "gbmta")


def make_records(models=("as", "mid", "ind"), attacks=("pgd", "apgd"), eps_grid=(4, 8, 16),
                 directions=DIRECTIONS, at=True, **kw):
  out = []
  for model in models:
    out.append(record(model, "clean", None, 0))
    out += [record(model, a, d, e, **kw) for a in attacks for d in directions for e in eps_grid]
  if at:
    out.append(record("mid_fat", "clean", None, 0, adv_training="fat:gbmta:eps8"))
    out += [record("mid_fat", "pgd", d, e, adv_training="fat:gbmta:eps8", at_scale=0.3, **kw)
            for d in directions for e in eps_grid]
  return out


def rows(table: str) -> dict[str, list[str]]:
  """Markdown table -> {first cell: [cells]} (header row under the key 'header')."""
  lines = [l for l in table.strip().splitlines() if not l.startswith("| :--")]
  parsed = [[c.strip() for c in l.strip("|").split("|")] for l in lines]
  return {"header": parsed[0], **{r[0]: r for r in parsed[1:]}}


def is_png(path) -> bool:
  """Whether the file is a PNG image of more than 1000 bytes."""
  return path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def example_arrays():
  """The inputs of ``report.figure_examples``: an image, two perturbations, clean and adv preds."""
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
  perturbed = {e: np.clip(image + rng.integers(-e, e + 1, image.shape), 0, 255).astype(np.uint8)
               for e in (4, 8)}
  preds = {"segment_semantic": rng.normal(size=(16, 16, 5)),
           "normal": rng.normal(size=(16, 16, 3)), "depth_zbuffer": rng.random((16, 16, 1))}
  return dict(image_rgb=image, perturbed=perturbed, preds_clean=preds,
              preds_adv={k: -v for k, v in preds.items()}, tasks=list(TASKS))


# The tiny training run of the train-loop and checkpoint tests.
NUM_STEPS = 6


def tiny_config(data_dir):
  c = config_lib.default_config()
  c.data_dir = str(data_dir)
  c.data_config = dict(resolution=16, num_train=24, num_test=8)
  c.width = 4
  c.tasks = ("segment_semantic", "depth_zbuffer")
  c.batch_size = 4
  c.num_steps = NUM_STEPS
  c.eval_every = NUM_STEPS
  c.eval_batch_size = 8
  c.checkpoint_every = 1
  c.keep_checkpoints = 2
  c.progress_bar = False
  return c


# Damaged checkpoints (train checkpoint and rerun tests).
def _array_file(step_dir: pathlib.Path) -> pathlib.Path:
  """The largest array-data file of a step (OCDBT data, not metadata)."""
  files = [f for f in (step_dir / "state").rglob("*") if f.is_file() and "ocdbt.process" in str(f)]
  return max(files, key=lambda f: f.stat().st_size)


def damage(step_dir: pathlib.Path, how: str) -> None:
  """Flips 4 bits in, truncates or garbles the step's largest array-data file."""
  f = _array_file(step_dir)
  data = bytearray(f.read_bytes())
  if how == "flip":
    for i in range(4):
      data[len(data) // 2 + 101 * i] ^= 1 << i
  elif how == "truncate":
    data = data[:len(data) // 2]
  else:
    data[100:164] = b"\x00" * 64
  f.write_bytes(bytes(data))


# The paper backbones' three NYUv2 tasks and their channels (model shape tests).
TASKS3 = {"segment_semantic": 40, "normal": 3, "depth_zbuffer": 1}


TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"  # one per program JAX traces (compiles)


@contextlib.contextmanager
def traced_programs():
  """The names of the programs JAX traces inside the block (jax.monitoring's public events)."""
  count = []

  def listener(event, duration, **kwargs):
    del duration
    if event == TRACE_EVENT:
      count.append(kwargs.get("fun_name"))

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield count
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


# The session's one trained smoke workdir (fixture `smoke_sweep` in conftest.py), shared by the
# main-job re-run, model-identity and robust-mode tests: the smoke model of layout 0 trained
# SMOKE_STEPS steps (checkpoints at half and all of them; fewer leave a clean metric at 0, so no
# ARP), its clean record and one attacked cell (GB-MTA PGD at ε 8), the examples and the report.
SMOKE_MODEL = "synthetic-small-L0"
SMOKE_STEPS = 40


def smoke_config(workdir: pathlib.Path, data_dir: pathlib.Path):
  """The smoke config cut to one model, one attacked cell, no robust suite."""
  c = quickstart.get_config("smoke")
  c.workdir, c.train.data_dir = str(workdir), str(data_dir)
  c.layouts, c.directions, c.eps = (0,), ("gbmta",), (8.0,)
  c.train.num_steps = c.train.eval_every = SMOKE_STEPS
  c.train.checkpoint_every = SMOKE_STEPS // 2
  c.train.progress_bar = False
  c.robust.enabled = False
  return c


def smoke_sweep(root: pathlib.Path) -> None:
  """Runs the sweep of smoke_config into root/work (data in root/tfds)."""
  run.run("sweep", smoke_config(root / "work", root / "tfds"))


def copy_smoke_sweep(root: pathlib.Path, dest: pathlib.Path, results: bool = True):
  """A writable copy of the shared sweep in dest (work/ and tfds/): its config on the copy."""
  ignore = None if results else shutil.ignore_patterns("results.jsonl", "examples.npz", "report")
  shutil.copytree(root / "work", dest / "work", ignore=ignore)
  shutil.copytree(root / "tfds", dest / "tfds")
  return smoke_config(dest / "work", dest / "tfds")


# The training-recipe tests: a per-pixel toy net with the signature of models.pure_apply (a
# BatchNorm-like centring: batch means in train mode, running means in eval mode), its tasks and
# a batch of 8×8 images inside the input box with labels at the prediction resolution.
RECIPE_TASKS = (mt.Segmentation(channels=5), mt.Normal(label_encoding="unit"), mt.Depth())


def recipe_apply(params, batch_stats, x, *, train, rng=None):
  """``(predictions, new batch_stats)`` of the toy net (``rng`` unused: no dropout)."""
  del rng
  h = jnp.tanh(x / 64.0 @ params["w"])
  mean = jnp.mean(h, axis=(0, 1, 2)) if train else batch_stats["mean"]
  h = h - mean
  stats = nnx.State({"mean": 0.9 * batch_stats["mean"] + 0.1 * mean if train else mean})
  preds = {"segment_semantic": h @ params["seg"], "normal": h @ params["normal"],
           "depth_zbuffer": jax.nn.softplus(h @ params["depth"]) + 0.5}
  return preds, stats


def recipe_problem(b=4, hw=8, seed=0):
  """``(params, batch_stats, batch)`` of recipe_apply; some segmentation pixels ignored."""
  rng = np.random.default_rng(seed)
  params = {"w": rng.normal(size=(3, 6)), "seg": rng.normal(size=(6, 5)),
            "normal": rng.normal(size=(6, 3)), "depth": rng.normal(size=(6, 1))}
  params = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}
  seg = rng.integers(0, 5, (b, hw, hw)).astype(np.int32)
  seg[:, 0] = 255
  normal = rng.normal(size=(b, hw, hw, 3))
  batch = {"image": rng.uniform(-100, 100, (b, hw, hw, 3)), "segment_semantic": seg,
           "normal": normal / np.linalg.norm(normal, axis=-1, keepdims=True),
           "depth_zbuffer": rng.uniform(0.5, 3.0, (b, hw, hw))}
  batch = {k: jnp.asarray(v) if k == "segment_semantic" else jnp.asarray(v, jnp.float32)
           for k, v in batch.items()}
  return params, {"mean": jnp.zeros(6, jnp.float32)}, batch


def recipe_losses_np(preds, batch):
  """NumPy transcription of the toy tasks' batch-pooled losses: CE over non-ignored pixels,
  1 − cos of normalised normals, L1 depth (every normal and depth pixel valid)."""
  p = {k: np.asarray(v, np.float64) for k, v in preds.items()}
  y = np.asarray(batch["segment_semantic"])
  logp = p["segment_semantic"] - p["segment_semantic"].max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  valid = y != 255
  nll = -np.take_along_axis(logp, np.where(valid, y, 0)[..., None], -1)[..., 0]
  n = p["normal"] / np.linalg.norm(p["normal"], axis=-1, keepdims=True)
  return {"segment_semantic": nll[valid].mean(),
          "normal": (1 - (n * np.asarray(batch["normal"])).sum(-1)).mean(),
          "depth_zbuffer": np.abs(p["depth_zbuffer"][..., 0] - np.asarray(batch["depth_zbuffer"])
                                  ).mean()}


def recipe_consistency_np(preds, preds_adv, batch):
  """NumPy transcription of TRADES's pooled consistencies: KL(softmax clean ‖ softmax adv) over
  non-ignored pixels, 1 − cos between the normals, |depth − depth_adv|."""
  p = {k: np.asarray(v, np.float64) for k, v in preds.items()}
  q = {k: np.asarray(v, np.float64) for k, v in preds_adv.items()}
  softmax = lambda z: np.exp(z - z.max(-1, keepdims=True)) / np.exp(
      z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)
  pc, pa = softmax(p["segment_semantic"]), softmax(q["segment_semantic"])
  kl = (pc * (np.log(pc) - np.log(pa))).sum(-1)
  unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)
  return {"segment_semantic": kl[np.asarray(batch["segment_semantic"]) != 255].mean(),
          "normal": (1 - (unit(p["normal"]) * unit(q["normal"])).sum(-1)).mean(),
          "depth_zbuffer": np.abs(p["depth_zbuffer"] - q["depth_zbuffer"]).mean()}
