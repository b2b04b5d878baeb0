"""Threat models (attacks/threat.py): L2 PGD and FGM against an eager NumPy transcription, and every
attack under L2 stays in the ball and the box."""

from hypothesis import given, settings, strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtajax import attacks
from mtajax import directions as D
from mtajax import testing

from fixtures import BOUNDS, masked_loss, masked_problem


def test_l2_pgd_and_fgm_match_an_eager_numpy_transcription(setup):
  x0, labels = setup
  x0n = np.asarray(x0)
  eps = np.array([50.0, 120.0, 300.0], np.float32)  # One radius per image.
  direction = D.gbmta()

  def unit(d):
    n = np.sqrt(np.sum(d * d, axis=(1, 2, 3), keepdims=True))
    return np.where(n > 0, d / np.where(n > 0, n, 1), 0)

  def project(x):
    delta = x - x0n
    n = np.sqrt(np.sum(delta * delta, axis=(1, 2, 3), keepdims=True))
    e = eps[:, None, None, None]
    return np.clip(x0n + delta * np.where(n > e, e / np.maximum(n, 1e-30), 1.0), *BOUNDS)
  n_steps, x = 4, x0n
  for _ in range(n_steps):
    d = np.asarray(direction(testing.loss_fn, jnp.asarray(x), labels)[0])
    x = project(x + (eps / n_steps)[:, None, None, None] * unit(d))
  got = attacks.pgd(testing.loss_fn, x0, labels, direction=direction, eps=eps, bounds=BOUNDS,
                    num_steps=n_steps, norm="l2", step_size=eps / n_steps)
  np.testing.assert_allclose(got.x_adv, x, atol=1e-3)
  d = np.asarray(direction(testing.loss_fn, x0, labels)[0])
  fgm = attacks.fgsm(testing.loss_fn, x0, labels, direction=direction, eps=eps, bounds=BOUNDS,
                     norm="l2")
  np.testing.assert_allclose(fgm.x_adv, project(x0n + eps[:, None, None, None] * unit(d)),
                             atol=1e-3)


@pytest.mark.parametrize("attack,options", [("fgsm", {}), ("pgd", {"random_start": True}),
                                            ("apgd", {}), ("apgd", {"variant": "autoattack",
                                                                    "random_start": True})],
                         ids=str)
@settings(max_examples=3, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2 ** 16))
def test_l2_attacks_stay_in_the_ball_and_the_box(attack, options, seed):
  x, labels = masked_problem(b=3, hw=5, seed=seed, empty=())
  rng = np.random.default_rng(seed)
  eps = rng.uniform(0.1, 3.0, 3).astype(np.float32)
  bounds = (np.float32(-1.2), np.float32(1.1))
  x = np.clip(x, *bounds)
  kw = {} if attack == "fgsm" else {"num_steps": 4, "key": jax.random.key(seed)}
  out = attacks.by_name(attack)(masked_loss, x, labels, direction=D.gbmta(), eps=eps,
                                bounds=bounds, norm="l2", **kw, **options)
  delta = np.asarray(out.x_adv) - x
  norms = np.sqrt(np.sum(delta.astype(np.float64) ** 2, axis=(1, 2, 3)))
  assert np.all(norms <= eps * (1 + 1e-5) + 1e-6), (norms, eps)
  assert np.all(norms > 0)
  assert np.all(np.asarray(out.x_adv) >= bounds[0]) and np.all(np.asarray(out.x_adv) <= bounds[1])
