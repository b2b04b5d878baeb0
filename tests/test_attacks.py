"""Attacks against eager transcriptions of reference-spec §5, plus property tests."""

import math

from hypothesis import given, settings, strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtajax import attacks
from mtajax import directions as D
from mtajax import testing
from mtajax.attacks.auto_sage import sech2

from fixtures import BOUNDS, EPS


def clip_proj(x, x0, eps):
  return np.clip(np.clip(x, x0 - eps, x0 + eps), BOUNDS[0], BOUNDS[1])


def eager_grad(task, x, labels, normalize=False):
  """Per-task gradient of the batch mean (optionally divided by the per-image loss), eagerly."""
  g = jax.grad(lambda x_: jnp.mean(testing.loss_fn(x_, labels)[task]))(x)
  if normalize:
    g = g / testing.loss_fn(x, labels)[task][:, None, None, None]
  return np.asarray(g)


def test_checkpoints_match_the_reference_float64_recurrence():
  assert attacks.checkpoints(10) == [0, 3, 5, 6, 8, 9, 10]
  assert attacks.checkpoints(20) == [0, 5, 9, 12, 15, 16, 18, 19, 20]
  assert attacks.checkpoints(5) == [0, 2, 3, 4, 5]
  assert attacks.checkpoints(100) == [0, 22, 41, 58, 70, 80, 87, 93, 99]


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


# ----------------------------------------------------------------------------------------------
# Property tests over shapes, ε, bounds and seeds on a cheap nonlinear multi-task loss.

def cheap_loss(x, labels):
  """Normals-style, cross-entropy, L1 and an identically-zero task on a (B, H, W, C) input."""
  m, target = labels
  h = jnp.tanh(x / 50.0) @ m  # (B, H, W, 4)
  n = h[..., :3] / jnp.maximum(jnp.linalg.norm(h[..., :3], axis=-1, keepdims=True), 1e-12)
  return {"normal": 1.0 - jnp.mean(jnp.sum(n * target, -1), axis=(1, 2)),
          "seg": jnp.mean(jax.nn.logsumexp(h, -1) - h[..., 0], axis=(1, 2)),
          "depth": jnp.mean(jnp.abs(h[..., 3] - 0.3), axis=(1, 2)),
          "zero": 0.0 * jnp.mean(x, axis=(1, 2, 3))}


ALL = [("fgsm", d) for d in ("single_normal", "total", "sign_total", "gbmta")]
ALL += [("pgd", d) for d in ("single_normal", "total", "sign_total", "gbmta")]
ALL += [("apgd", d) for d in ("single_normal", "total", "sign_total", "gbmta")]
ALL += [("auto_sage", d) for d in ("total", "gbmta")]


@st.composite
def problems(draw):
  b, hw, c = draw(st.sampled_from([1, 3])), draw(st.sampled_from([2, 5])), 3
  seed = draw(st.integers(0, 2 ** 16))
  eps = draw(st.floats(0.0, 20.0))
  rng = np.random.default_rng(seed)
  low = rng.uniform(-130, -50, c).astype(np.float32)
  high = low + rng.uniform(1, 250, c).astype(np.float32)
  x = rng.uniform(low, high, (b, hw, hw, c)).astype(np.float32)
  m = rng.normal(size=(c, 4)).astype(np.float32)
  target = rng.normal(size=(b, hw, hw, 3)).astype(np.float32)
  target /= np.linalg.norm(target, axis=-1, keepdims=True)
  return x, (m, target), eps, (low, high), seed


@pytest.mark.parametrize("attack,direction", ALL)
@settings(max_examples=3, deadline=None)
@given(problem=problems())
def test_properties(attack, direction, problem):
  x, labels, eps, bounds, seed = problem
  fn = attacks.by_name(attack)
  kwargs = {} if attack == "fgsm" else {"num_steps": 3}
  if attack in ("pgd", "apgd"):
    kwargs.update(random_start=True, key=jax.random.key(seed))
  run = lambda: fn(cheap_loss, x, labels, direction=D.by_name(direction), eps=eps,  # pylint: disable=unnecessary-lambda-assignment
                   bounds=bounds, **kwargs)
  out = run()
  x_adv = np.asarray(out.x_adv)
  assert np.all(np.isfinite(x_adv))
  assert np.max(np.abs(x_adv - x)) <= eps + 1e-6
  assert np.all(x_adv >= bounds[0]) and np.all(x_adv <= bounds[1])
  np.testing.assert_array_equal(np.asarray(run().x_adv), x_adv)  # Same key => same output.
  assert np.all(np.isfinite(out.objective)) or direction == "gbmta"  # c_t = 0 for "zero".


@pytest.mark.parametrize("attack", list(attacks.ATTACKS))
def test_bad_inputs_give_clear_errors(attack):
  x = np.zeros((2, 4, 4, 3), np.float32)
  labels = (np.ones((3, 4), np.float32), np.ones((2, 4, 4, 3), np.float32) / np.sqrt(3))
  fn = attacks.by_name(attack)
  kw = dict(direction=D.total(), bounds=(-1.0, 1.0))
  with pytest.raises(ValueError, match="NaN"):
    fn(cheap_loss, np.where(x == 0, np.nan, x), labels, eps=1.0, **kw)
  with pytest.raises(ValueError, match="eps must be >= 0"):
    fn(cheap_loss, x, labels, eps=-1.0, **kw)
  with pytest.raises(ValueError, match="outside the input bounds"):
    fn(cheap_loss, x + 5.0, labels, eps=1.0, **kw)
  with pytest.raises(ValueError, match="one value per channel"):
    fn(cheap_loss, x, labels, eps=1.0, direction=D.total(), bounds=(np.zeros(2), np.ones(2)))


def test_nan_loss_leaves_the_batch_finite_and_visible():
  x = np.zeros((2, 4, 4, 3), np.float32)
  labels = (np.ones((3, 4), np.float32), np.ones((2, 4, 4, 3), np.float32) / np.sqrt(3))
  nan_loss = lambda x_, l: {**cheap_loss(x_, l), "bad": jnp.mean(x_, axis=(1, 2, 3)) * jnp.nan}  # pylint: disable=unnecessary-lambda-assignment
  out = attacks.pgd(nan_loss, x, labels, direction=D.gbmta(), eps=1.0, bounds=(-2.0, 2.0),
                    num_steps=2)
  assert np.all(np.isfinite(out.x_adv))
  assert np.all(np.isnan(out.losses["bad"]))


@pytest.mark.parametrize("attack", list(attacks.ATTACKS))
def test_each_attack_compiles_once_per_shape(attack):
  traces = []

  def counted(x, labels):
    traces.append(1)
    return cheap_loss(x, labels)
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (2, 4, 4, 3)).astype(np.float32)
  labels = (rng.normal(size=(3, 4)).astype(np.float32), np.ones((2, 4, 4, 3), np.float32) / 3)
  fn = attacks.by_name(attack)
  kw = {} if attack == "fgsm" else {"num_steps": 2, "step_size": 0.1}
  fn(counted, x, labels, direction=D.gbmta(), eps=1.0, bounds=(-2.0, 2.0), **kw)
  first = len(traces)
  for eps, low in ((2.0, -3.0), (0.5, -2.5)):
    kw = {} if attack == "fgsm" else {"num_steps": 2, "step_size": eps / 3}
    fn(counted, x + 0.1, labels, direction=D.gbmta(), eps=eps, bounds=(low, 2.0), **kw)
  assert len(traces) == first
