"""Reference optimiser (Adam with coupled L2, StepLR per iteration) against a NumPy transcription."""

import jax.numpy as jnp
import numpy as np

import mtajax  # noqa: F401  (XLA:CPU workaround before JAX initialises)
from mtajax.train import config as config_lib
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
