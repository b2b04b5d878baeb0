"""FGSM and PGD against an eager I-FGSM transcription (reference-spec §5)."""

import jax.numpy as jnp
import numpy as np
import pytest

from mtajax import attacks
from mtajax import directions as D
from mtajax import testing

from fixtures import BOUNDS, EPS, clip_proj


@pytest.mark.parametrize("direction", [D.single("normal"), D.total(), D.sign_total(), D.gbmta()],
                         ids=lambda d: d.name)
def test_fgsm_and_pgd_match_eager_ifgsm(setup, direction):
  x0, labels = setup
  x0n = np.asarray(x0)
  d, _ = direction(testing.loss_fn, x0, labels)
  want = np.clip(x0n + EPS * np.sign(d), *BOUNDS)
  got = attacks.fgsm(testing.loss_fn, x0, labels, direction=direction, eps=EPS, bounds=BOUNDS)
  np.testing.assert_allclose(got.x_adv, want, atol=1e-4)
  x = x0n
  for _ in range(4):
    d, _ = direction(testing.loss_fn, jnp.asarray(x), labels)
    x = clip_proj(x + EPS / 4 * np.sign(d), x0n, EPS)
  got = attacks.pgd(testing.loss_fn, x0, labels, direction=direction, eps=EPS, bounds=BOUNDS,
                    num_steps=4)
  np.testing.assert_allclose(got.x_adv, x, atol=1e-4)
  assert got.objective.shape == (4, 3)
