"""Auto-SAGE against an eager transcription of the reference, and its stable sech²."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtajax import attacks
from mtajax import directions as D
from mtajax import testing
from mtajax.attacks.auto_sage import sech2

from fixtures import BOUNDS, EPS, clip_proj


def eager_grad(task, x, labels, normalize=False):
  """Per-task gradient of the batch mean (optionally divided by the per-image loss), eagerly."""
  g = jax.grad(lambda x_: jnp.mean(testing.loss_fn(x_, labels)[task]))(x)
  if normalize:
    g = g / testing.loss_fn(x, labels)[task][:, None, None, None]
  return np.asarray(g)


@pytest.mark.parametrize("lookahead", ["all", "last_task"])
@pytest.mark.parametrize("direction", [D.total(), D.gbmta()], ids=lambda d: d.name)
def test_auto_sage_matches_eager_reference_transcription(setup, direction, lookahead):
  x0, labels = setup
  x0n = np.asarray(x0)
  tasks = list(labels[1])
  normalize = direction.name == "gbmta"
  n, s, lr, kappa = 3, EPS / 3, 10.0, 50.0
  x = x0n
  a = np.ones((len(tasks),) + x0n.shape, np.float32)
  for _ in range(n):
    dm = np.stack([eager_grad(t, jnp.asarray(x), labels, normalize) for t in tasks])
    big_s = np.sum(a * dm, 0)
    x1 = clip_proj(x + s * np.sign(big_s), x0n, EPS)
    if lookahead == "all":
      dfdx = -sum(eager_grad(t, jnp.asarray(x1), labels, normalize) for t in tasks)
    else:
      dfdx = -len(tasks) * eager_grad(tasks[-1], jnp.asarray(x1), labels, normalize)
    q = 1.0 / np.cosh(np.clip(kappa * big_s, -80, 80)) ** 2
    a = a - lr * dfdx[None] * (kappa * s * dm * q[None])
    x = clip_proj(x + s * np.sign(np.sum(a * dm, 0)), x0n, EPS)
  got = attacks.auto_sage(testing.loss_fn, x0, labels, direction=direction, eps=EPS,
                          bounds=BOUNDS, num_steps=n, lookahead=lookahead)
  np.testing.assert_allclose(got.x_adv, x, atol=1e-3)


def test_sech2_is_stable():
  u = jnp.array([0.0, 1.0, -3.0, 44.5, -1e4])
  np.testing.assert_allclose(sech2(u),
                             1.0 / np.cosh(np.array([0.0, 1.0, -3.0, 44.5, 700.0])) ** 2,
                             rtol=1e-5, atol=1e-30)
