"""A small self-contained multi-task conv net with reference-style losses.

Used by the attack tests, the benchmarks and the README example: a shared conv encoder with one
head per task (segmentation logits, surface normals, depth and, for five tasks, keypoints and edges)
and per-image losses of the reference's form (cross-entropy, 1 − cosine of L2-normalised normals,
L1). It is plain JAX (a dict of parameters), so it shows that the attacks take any JAX model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Params = dict[str, jax.Array]
TASK_CHANNELS = {"segment_semantic": 13, "normal": 3, "depth_zbuffer": 1, "keypoints2d": 1,
                 "edge_texture": 1}


def _conv(x: jax.Array, w: jax.Array, stride: int = 1) -> jax.Array:
  return jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def init(key: jax.Array, num_tasks: int = 3, width: int = 32) -> Params:
  """Random parameters for a net with the first ``num_tasks`` tasks of :data:`TASK_CHANNELS`."""
  tasks = list(TASK_CHANNELS)[:num_tasks]
  keys = iter(jax.random.split(key, 4 + 2 * num_tasks))
  he = lambda k, shape: jax.random.normal(k, shape) * jnp.sqrt(2.0 / (shape[0] * shape[1] * shape[2]))  # pylint: disable=unnecessary-lambda-assignment
  params = {"enc0": he(next(keys), (3, 3, 3, width)),
            "enc1": he(next(keys), (3, 3, width, width)),
            "enc2": he(next(keys), (3, 3, width, 2 * width)),
            "enc3": he(next(keys), (3, 3, 2 * width, 2 * width))}
  for t in tasks:
    params[f"{t}/hidden"] = he(next(keys), (3, 3, 2 * width, width))
    params[f"{t}/out"] = he(next(keys), (1, 1, width, TASK_CHANNELS[t]))
  return params


def apply(params: Params, x: jax.Array) -> dict[str, jax.Array]:
  """Predictions at 1/4 of the input resolution, one entry per task."""
  h = jax.nn.relu(_conv(x / 64.0, params["enc0"]))
  h = jax.nn.relu(_conv(h, params["enc1"], 2))
  h = jax.nn.relu(_conv(h, params["enc2"], 2))
  h = jax.nn.relu(_conv(h, params["enc3"]))
  tasks = [k.split("/")[0] for k in params if k.endswith("/out")]
  return {t: _conv(jax.nn.relu(_conv(h, params[f"{t}/hidden"])), params[f"{t}/out"])
          for t in tasks}


def _normalise(v: jax.Array) -> jax.Array:
  return v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def per_image_losses(pred: dict[str, jax.Array], labels: dict[str, jax.Array]
                     ) -> dict[str, jax.Array]:
  """Reference-style per-image losses (B,) for labels at prediction resolution."""
  out = {}
  for t, p in pred.items():
    y = labels[t]
    if t == "segment_semantic":
      nll = -jnp.take_along_axis(jax.nn.log_softmax(p), y[..., None], axis=-1)[..., 0]
      out[t] = jnp.mean(nll, axis=(1, 2))
    elif t == "normal":
      out[t] = 1.0 - jnp.mean(jnp.sum(_normalise(p) * _normalise(y), -1), axis=(1, 2))
    else:
      out[t] = jnp.mean(jnp.abs(p[..., 0] - y), axis=(1, 2))
  return out


def random_labels(key: jax.Array, params: Params, batch: int, size: int) -> dict[str, jax.Array]:
  """Random labels at prediction resolution (size // 4) for the tasks of ``params``."""
  tasks = [k.split("/")[0] for k in params if k.endswith("/out")]
  shape = (batch, size // 4, size // 4)
  out = {}
  for t, k in zip(tasks, jax.random.split(key, len(tasks))):
    if t == "segment_semantic":
      out[t] = jax.random.randint(k, shape, 0, TASK_CHANNELS[t])
    elif t == "normal":
      out[t] = _normalise(jax.random.normal(k, shape + (3,)))
    else:
      out[t] = jax.random.uniform(k, shape)
  return out


def loss_fn(x: jax.Array, labels: tuple[Params, dict[str, jax.Array]]) -> dict[str, jax.Array]:
  """An attack loss function: ``labels`` carries (params, task labels) so weights stay traced."""
  params, y = labels
  return per_image_losses(apply(params, x), y)
