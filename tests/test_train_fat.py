"""Early-stopped PGD of fast adversarial training against a NumPy transcription."""

import jax.numpy as jnp
import numpy as np

import mtajax  # noqa: F401  (XLA:CPU workaround before JAX initialises)
from mtajax import directions
from mtajax.train import fat


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
                                     num_steps=8, tau=tau, margin=0.5, loop="rolled")
    want_x, want_taken = _numpy_early_stopped(x0, w, 4.0, 8, tau, 0.5, 0.5)
    np.testing.assert_allclose(np.asarray(x), want_x, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(taken), want_taken)
    assert want_taken.min() < 8 <= want_taken.max()  # some examples stop early, one never succeeds


def test_relative_increase_ignores_zero_clean_loss():
  got = fat.relative_increase({"a": jnp.array([2.0, 5.0]), "b": jnp.array([3.0, 1.0])},
                              {"a": jnp.array([1.0, 0.0]), "b": jnp.array([1.0, 1.0])}, ["a", "b"])
  np.testing.assert_allclose(np.asarray(got), [(1.0 + 2.0) / 2, 0.0 / 2])
