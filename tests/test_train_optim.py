"""Reference optimiser and early-stopped PGD against NumPy transcriptions."""

import numpy as np
import jax
import jax.numpy as jnp

import mtajax  # noqa: F401  (XLA:CPU workaround before JAX initialises)
from mtajax import directions
from mtajax.train import config as config_lib
from mtajax.train import fat
from mtajax.train import optim


def _torch_adam_l2(params, grads_seq, lr0, step, gamma, b1, b2, eps, wd, updates_per_step):
  """PyTorch Adam(weight_decay=wd) with StepLR stepped once per iteration, in NumPy."""
  p = params.astype(np.float64)
  m = np.zeros_like(p)
  v = np.zeros_like(p)
  for t, g in enumerate(grads_seq, start=1):
    lr = lr0 * gamma ** ((t - 1) // updates_per_step // step)
    g = g + wd * p
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    m_hat = m / (1 - b1 ** t)
    v_hat = v / (1 - b2 ** t)
    p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
  return p


def test_optimizer_matches_pytorch_adam_with_coupled_l2_and_steplr():
  c = config_lib.default_config()
  c.lr, c.lr_decay_every, c.lr_decay_rate = 1e-2, 3, 0.5
  rng = np.random.default_rng(0)
  p0 = rng.normal(size=(5,)).astype(np.float32)
  grads = [rng.normal(size=(5,)).astype(np.float32) for _ in range(10)]
  for per_step in (1, 2):
    opt = optim.make_optimizer(c, per_step)
    p = jnp.asarray(p0)
    state = opt.init(p)
    for g in grads:
      updates, state = opt.update(jnp.asarray(g), state, p)
      p = p + updates
    want = _torch_adam_l2(p0, grads, 1e-2, 3, 0.5, 0.5, 0.999, 1e-8, 1e-4, per_step)
    np.testing.assert_allclose(np.asarray(p), want, rtol=1e-5, atol=1e-6)


def test_learning_rate_is_staircase_per_iteration():
  c = config_lib.default_config()
  lr = optim.learning_rate(c)
  assert [float(lr(i)) for i in (0, 3999, 4000, 8000)] == np.float32(
      [1e-3, 1e-3, 5e-4, 2.5e-4]).tolist()


def _numpy_early_stopped(x0, w, eps, num_steps, tau, margin, step):
  """Toy loss L_b = 1 + sum(w * x_b); direction sign(w); NumPy early-stop bookkeeping."""
  x = x0.copy()
  clean = 1 + (w * x0).sum(axis=1)
  budget = np.full(len(x0), tau)
  hit = np.zeros(len(x0), bool)
  taken = np.zeros(len(x0), int)
  for _ in range(num_steps):
    loss = 1 + (w * x).sum(axis=1)
    hit |= (loss - clean) / clean >= margin
    moving = ~hit | (budget > 0)
    new = np.clip(x + step * np.sign(w), x0 - eps, x0 + eps)
    x = np.where(moving[:, None], new, x)
    budget = np.where(hit & moving, budget - 1, budget)
    taken += moving
  return x, taken


def test_early_stopped_pgd_matches_numpy():
  w = np.array([1.0, -2.0, 0.5], np.float32)
  x0 = np.array([[1.0, 0.0, 2.0], [5.0, 0.0, 10.0], [0.0, 0.0, 100.0]], np.float32)

  def loss_fn(x, labels):
    return {"a": 1.0 + x @ labels}

  for tau in (0, 1, 3):
    x, taken = fat.early_stopped_pgd(loss_fn, jnp.asarray(x0), jnp.asarray(w),
                                     direction=directions.total(), eps=4.0, bounds=(-1000, 1000),
                                     num_steps=8, tau=tau, margin=0.5, unroll=1)
    want_x, want_taken = _numpy_early_stopped(x0, w, 4.0, 8, tau, 0.5, 0.5)
    np.testing.assert_allclose(np.asarray(x), want_x, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(taken), want_taken)
    assert want_taken.min() < 8 <= want_taken.max()  # some examples stop early, one never succeeds


def test_relative_increase_ignores_zero_clean_loss():
  got = fat.relative_increase({"a": jnp.array([2.0, 5.0]), "b": jnp.array([3.0, 1.0])},
                              {"a": jnp.array([1.0, 0.0]), "b": jnp.array([1.0, 1.0])}, ["a", "b"])
  np.testing.assert_allclose(np.asarray(got), [(1.0 + 2.0) / 2, 0.0 / 2])
