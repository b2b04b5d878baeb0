"""mtajax.tasks.loss_fn: make_loss_fn and total_loss, and per-task gradients of its losses under
jit and vmap."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtajax import tasks as mt

from fixtures import TOL, make_batch, preds


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


def test_per_task_attack_losses():
  """A dict gives each task its own attack loss; tasks not named keep the default bit for bit."""
  batch = make_batch(21)
  tasks = mt.nyuv2_tasks()
  outputs = {t.name: jnp.asarray(preds(22 + i, t.channels)) for i, t in enumerate(tasks)}
  context = types.SimpleNamespace(step=jnp.int32(3), num_steps=8, clean=outputs)
  per_task = {"normal": "relative", "depth_zbuffer": "segpgd"}
  loss_fn = mt.make_loss_fn(lambda x: outputs, tasks, "image", attack_loss=per_task)
  assert loss_fn.attack_loss == (("normal", "relative"), ("depth_zbuffer", "segpgd"))
  got = loss_fn(0.0, batch, context)
  for t in tasks:
    num, den = mt.attack_losses.get(per_task.get(t.name, "default"))(t, outputs[t.name], batch,
                                                                     context)
    want = mt.base.reduce_loss(num, den, "image", batch)
    np.testing.assert_array_equal(got[t.name], want)
  plain = mt.make_loss_fn(lambda x: outputs, tasks, "image")(0.0, batch)
  np.testing.assert_array_equal(got["segment_semantic"], plain["segment_semantic"])
  all_default = mt.make_loss_fn(lambda x: outputs, tasks, "image", {"normal": "default"})
  assert all_default.attack_loss == "default" and not all_default.takes_context
  for name, value in all_default(0.0, batch).items():
    np.testing.assert_array_equal(value, plain[name])
  with pytest.raises(ValueError, match=r"attack_loss names unknown tasks \['edges'\]; the tasks "
                     r"are \['segment_semantic', 'normal', 'depth_zbuffer'\]"):
    mt.make_loss_fn(lambda x: outputs, tasks, "image", {"edges": "segpgd"})
  with pytest.raises(ValueError, match="unknown attack loss 'nope'"):
    mt.make_loss_fn(lambda x: outputs, tasks, "image", {"normal": "nope"})
  with pytest.raises(ValueError, match="'relative' supports Normal, L1Task tasks, not "
                     "'segment_semantic'"):
    mt.make_loss_fn(lambda x: outputs, tasks, "image", {"segment_semantic": "relative"})(
        0.0, batch, context)
