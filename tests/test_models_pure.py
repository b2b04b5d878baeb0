"""pure_predict / pure_apply: jit, grad, vmap and scan of the pure views, train and eval mode, and
equal Apply / Predict for equal models (one compile)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import mtajax  # noqa: F401  (XLA:CPU workaround before JAX initialises)
from mtajax import models as M

from fixtures import TOY_TASKS, random_x


@pytest.fixture(scope="module")
def small():
  """A default-width small model with He-scaled backbone kernels.

  With the reference init (std 0.01) and fresh running statistics, eval outputs barely depend on x.
  """
  model = M.build_model("small", TOY_TASKS, 5, rngs=nnx.Rngs(0))
  copies = nnx.state(model.copies, nnx.Param)
  nnx.update(model.copies, jax.tree.map_with_path(
      lambda path, p: p * np.sqrt(2 / np.prod(p.shape[:-1])) / 0.01
      if "kernel" in jax.tree_util.keystr(path) else p, copies))
  return model


def test_pure_predict_jit_grad_vmap_scan(small):
  predict, state = M.pure_predict(small)
  x = random_x((2, 16, 16, 3), seed=1)

  def loss(x):
    return sum(jnp.mean(v ** 2) for v in predict(state, x).values())

  grad_fn = jax.jit(jax.grad(loss))
  grad = grad_fn(x)
  assert grad.shape == x.shape and bool(jnp.all(jnp.isfinite(grad)))
  # Directional derivative against a float64 central difference (small step: ReLU kinks).
  v = random_x((2, 16, 16, 3), seed=2)
  with jax.enable_x64(True):
    state64, x64, v64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), (state, x, v))
    loss64 = jax.jit(lambda x: sum(jnp.mean(p ** 2) for p in predict(state64, x).values()))
    fd = float((loss64(x64 + 1e-6 * v64) - loss64(x64 - 1e-6 * v64)) / 2e-6)
  assert abs(fd) > 1e-3
  np.testing.assert_allclose(jnp.vdot(grad, v), fd, rtol=1e-3)
  # Eval mode is per-sample: vmapped single-image predictions equal the batched ones.
  out = jax.jit(predict)(state, x)
  per_sample = jax.jit(jax.vmap(lambda xi: predict(state, xi[None])))(x)
  for name in TOY_TASKS:
    np.testing.assert_allclose(per_sample[name][:, 0], out[name], rtol=1e-4, atol=1e-6)

  def step(x, _):
    return x + jnp.sign(grad_fn(x)), None

  scanned = jax.jit(lambda x: jax.lax.scan(step, x, length=2)[0])(x)
  looped = step(step(x, None)[0], None)[0]
  np.testing.assert_allclose(scanned, looped, rtol=1e-5, atol=1e-4)


def test_pure_apply_train_and_eval(small):
  apply, params, batch_stats = M.pure_apply(small)
  x = random_x((4, 16, 16, 3), seed=3)
  before = jax.tree.map(np.array, batch_stats)
  train = jax.jit(apply, static_argnames="train")
  out1, stats1 = train(params, batch_stats, x, train=True, rng=jax.random.key(0))
  out2, _ = train(params, batch_stats, x, train=True, rng=jax.random.key(1))
  out1b, stats1b = train(params, batch_stats, x, train=True, rng=jax.random.key(0))
  # Running stats moved; inputs untouched; dropout follows the key.
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b), before, jax.tree.map(np.array, stats1))
  assert all(jax.tree.leaves(changed))
  jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.array, batch_stats))
  assert not np.allclose(out1["normal"], out2["normal"])
  np.testing.assert_array_equal(out1["normal"], out1b["normal"])
  # Stem BN: running mean = 0.1 * batch mean of the stem conv output (PyTorch momentum 0.1).
  stem_out = small.copies[0][0].conv(x)
  np.testing.assert_allclose(stats1["copies"][0][0]["bn"]["mean"][...],
                             0.1 * np.mean(stem_out, axis=(0, 1, 2)), rtol=1e-4, atol=1e-7)
  # Eval mode returns the stats unchanged and equals pure_predict.
  predict, state = M.pure_predict(small)
  out_eval, stats_eval = apply(params, batch_stats, x, train=False)
  jax.tree.map(np.testing.assert_array_equal, stats_eval, batch_stats)
  expected = predict(state, x)
  for name in TOY_TASKS:
    np.testing.assert_allclose(out_eval[name], expected[name], rtol=1e-6, atol=1e-7)
  with pytest.raises(ValueError, match="needs rng"):
    apply(params, batch_stats, x, train=True)


def test_small_forward_and_input_gradient_are_finite_and_nonzero(small):
  # Timings belong in benchmarks/ (the README quotes the measured ones), not in tests.
  predict, state = M.pure_predict(small)
  step = jax.jit(jax.grad(lambda x: sum(jnp.sum(v) for v in predict(state, x).values())))
  grad = np.asarray(step(random_x((8, 64, 64, 3))))
  assert grad.shape == (8, 64, 64, 3) and np.isfinite(grad).all() and np.abs(grad).max() > 0


def test_apply_and_predict_are_equal_for_equal_models_so_jit_compiles_once():
  def build(seed, width=4):
    return M.build_model("small", {"a": 3, "b": 1}, 0, width=width, rngs=nnx.Rngs(seed))

  a, pa, sa = M.pure_apply(build(0))
  b, pb, sb = M.pure_apply(nnx.eval_shape(lambda: build(1)))  # as load_model restores
  assert a == b and hash(a) == hash(b) and M.Predict(a) == M.Predict(b)
  assert M.pure_apply(build(0, width=8))[0] != a  # another model: another program
  predict = jax.jit(lambda state, x, *, p: p(state, x), static_argnames="p")
  x = random_x((2, 16, 16, 3), seed=1)
  out_a = predict((pa, sa), x, p=M.Predict(a))
  predict((pa, sa), x, p=M.Predict(b))
  assert predict._cache_size() == 1  # pylint: disable=protected-access
  np.testing.assert_array_equal(out_a["a"], a(pa, sa, x, train=False)[0]["a"])
