"""APGD against eager transcriptions: the reference pseudocode (spec §5.3) and AutoAttack's."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtajax import attacks
from mtajax import directions as D
from mtajax import testing
from mtajax.attacks import common

from fixtures import BOUNDS, EPS, clip_proj


def test_checkpoints_match_the_reference_float64_recurrence():
  assert attacks.checkpoints(10) == [0, 3, 5, 6, 8, 9, 10]
  assert attacks.checkpoints(20) == [0, 5, 9, 12, 15, 16, 18, 19, 20]
  assert attacks.checkpoints(5) == [0, 2, 3, 4, 5]
  assert attacks.checkpoints(100) == [0, 22, 41, 58, 70, 80, 87, 93, 99]


def eager_apgd(direction, x0, labels, n, baselines=None, revised=False):
  """Line-by-line transcription of the reference APGD pseudocode (spec §5.3), batch objective."""
  x0 = np.asarray(x0)

  def grad(x):
    return np.asarray(direction(testing.loss_fn, jnp.asarray(x), labels)[0])

  def objective(x):
    losses = testing.loss_fn(jnp.asarray(x), labels)
    return float(jnp.mean(direction.objective(losses, baselines)))
  p = [0, 0.22]
  while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) < 1:
    p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
  w = []
  for pj in p:
    if math.ceil(pj * n) not in w:
      w.append(math.ceil(pj * n))
  eta = [EPS / n] * (n + 1)
  f = [0.0] * (n + 1)
  x1 = clip_proj(x0 + eta[0] * np.sign(grad(x0)), x0, EPS)
  f[0], f[1] = objective(x0), objective(x1)
  x_best = x1 if f[1] > f[0] else x0
  f_best = max(f[0], f[1])
  x_prev, x_cur = x0, x1
  for k in range(1, n):
    z = np.clip(x_cur + eta[k] * np.sign(grad(x_cur)), x0 - EPS, x0 + EPS)
    x_new = x_cur + 0.75 * (z - x_cur) + 0.25 * (x_cur - x_prev)
    x_new = clip_proj(x_new, x0, EPS)
    f[k + 1] = objective(x_new)
    if f[k + 1] >= f_best:
      x_best = x_new
    f_best = max(f_best, f[k + 1])
    eta[k + 1] = eta[k]
    if k in w:
      cur, prev = w[w.index(k)], w[w.index(k) - 1]
      cond1 = sum(f[i + 1] > f[i] for i in range(prev, cur)) < 0.75 * (cur - prev)
      cond2 = eta[prev] == eta[cur] and f[prev] == f[cur]
      if cond1 or cond2:
        eta[k + 1] = eta[k] / 2
        if revised:
          x_new = x_best
    x_prev, x_cur = x_cur, x_new
  return x_best, f, eta


@pytest.mark.parametrize("revised", [False, True])
@pytest.mark.parametrize("direction", [D.total(), D.gbmta(), D.sign_total()], ids=lambda d: d.name)
def test_apgd_matches_eager_reference_transcription(setup, direction, revised):
  x0, labels = setup
  n = 10
  baselines = {t: jnp.mean(v) for t, v in testing.loss_fn(x0, labels).items()}
  want, f, _ = eager_apgd(direction, x0, labels, n, baselines, revised)
  got = attacks.apgd(testing.loss_fn, x0, labels, direction=direction, eps=EPS, bounds=BOUNDS,
                     num_steps=n, baselines=baselines, restart_from_best=revised)
  np.testing.assert_allclose(got.objective[:, 0], f, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got.x_adv, want, atol=1e-3)


def test_apgd_per_sample_mode_runs_per_sample_step_sizes(setup):
  x0, labels = setup
  got = attacks.apgd(testing.loss_fn, x0, labels, direction=D.total(), eps=EPS, bounds=BOUNDS,
                     num_steps=10, per_sample=True, step_size=2 * EPS, random_start=True,
                     key=jax.random.key(1), restart_from_best=True)
  assert not np.allclose(got.objective[:, 0], got.objective[:, 1])  # Per-sample objective.
  # The best point has the highest objective of all evaluated iterates, per sample.
  final = D.total().objective(testing.loss_fn(got.x_adv, labels))
  np.testing.assert_allclose(final, np.max(got.objective, axis=0), rtol=1e-5)


def eager_autoattack_apgd(direction, x0, labels, n, x_start, norm, eps):
  """fra31/auto-attack ``APGDAttack.attack_single_run`` (L∞/L2 branches), loss = objective."""
  x0 = np.asarray(x0, np.float32)
  ndim = (1, 2, 3)

  def grad_and_f(x):
    d, losses = direction(testing.loss_fn, jnp.asarray(x), labels)
    return np.array(d), losses

  def unit(g):
    if norm == "linf":
      return np.sign(g)
    return g / (np.sqrt(np.sum(g ** 2, axis=ndim, keepdims=True)) + 1e-12)

  def proj(x):
    if norm == "linf":
      return np.clip(np.minimum(np.maximum(x, x0 - eps), x0 + eps), *BOUNDS)
    delta = x - x0
    nrm = np.sqrt(np.sum(delta ** 2, axis=ndim, keepdims=True))
    return np.clip(x0 + delta / (nrm + 1e-12) * np.minimum(eps, nrm), *BOUNDS)
  n_iter_2, n_iter_min, size_decr = max(int(0.22 * n), 1), max(int(0.06 * n), 1), max(
      int(0.03 * n), 1)
  x_adv = np.array(x_start)
  grad, losses0 = grad_and_f(x_adv)
  baselines = direction.init(testing.loss_fn, x_adv, labels, losses0)

  def objective(losses):
    return np.array(direction.objective(losses, baselines))
  loss_best = objective(losses0)
  x_best, grad_best = x_adv.copy(), grad.copy()
  step = 2 * eps * np.ones((x0.shape[0], 1, 1, 1), np.float32)
  x_old = x_adv.copy()
  k, counter3 = n_iter_2, 0
  loss_steps = np.zeros((n, x0.shape[0]), np.float32)
  best_last, reduced_last = loss_best.copy(), np.ones_like(loss_best)
  steps = []
  for i in range(n):
    grad2 = x_adv - x_old
    x_old = x_adv.copy()
    a = 0.75 if i > 0 else 1.0
    steps.append(step[:, 0, 0, 0].copy())
    x1 = proj(x_adv + step * unit(grad))
    x1 = proj(x_adv + (x1 - x_adv) * a + grad2 * (1 - a))
    x_adv = x1
    grad, losses = grad_and_f(x_adv)
    y1 = objective(losses)
    loss_steps[i] = y1
    ind = y1 > loss_best
    x_best[ind], grad_best[ind], loss_best[ind] = x_adv[ind], grad[ind], y1[ind]
    counter3 += 1
    if counter3 == k:
      t = np.zeros(x0.shape[0])
      for c in range(k):
        t += loss_steps[i - c] > loss_steps[i - c - 1]
      fl = (t <= k * 0.75).astype(np.float32)
      fl = np.maximum(fl, (1 - reduced_last) * (best_last >= loss_best))
      reduced_last, best_last = fl.copy(), loss_best.copy()
      idx = fl > 0
      step[idx] /= 2.0
      x_adv[idx], grad[idx] = x_best[idx], grad_best[idx]
      k = max(k - size_decr, n_iter_min)
      counter3 = 0
  return x_best, loss_best, np.stack(steps)


@pytest.mark.parametrize("norm,eps", [("linf", EPS), ("l2", 200.0)])
@pytest.mark.parametrize("direction", [D.total(), D.gbmta()], ids=lambda d: d.name)
def test_autoattack_apgd_matches_an_eager_transcription_of_fra31(setup, direction, norm, eps):
  x0, labels = setup
  n, key = 10, jax.random.key(5)
  x_start = common.clip(attacks.NORMS[norm].autoattack_start(key, x0, jnp.float32(eps)), BOUNDS)
  want_x, want_f, want_steps = eager_autoattack_apgd(direction, x0, labels, n, x_start, norm, eps)
  got = attacks.apgd(testing.loss_fn, x0, labels, direction=direction, eps=eps, bounds=BOUNDS,
                     num_steps=n, variant="autoattack", random_start=True, key=key, norm=norm)
  np.testing.assert_allclose(got.step_size, want_steps, rtol=1e-6)
  np.testing.assert_allclose(np.max(got.objective, axis=0), want_f, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(got.x_adv, want_x, atol=1e-2)
  assert np.any(want_steps[-1] < want_steps[0])  # The schedule halved at least once.


def test_autoattack_schedule_matches_its_counter_rule():
  is_check, window = attacks.autoattack_schedule(100)
  assert list(np.flatnonzero(is_check)[:4]) == [21, 40, 56, 69]  # k = 22, 19, 16, 13, ...
  assert list(window[is_check][:4]) == [22, 19, 16, 13]
