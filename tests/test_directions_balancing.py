"""Balancing rules against NumPy/SciPy transcriptions of the papers, written on the full vectors.

The references solve each rule directly from its paper's statement (SLSQP for MGDA and CAGrad,
vector projections for PCGrad, the D/U closed form for IMTL-G, an L-BFGS-B solve of Nash-MTL's
equation); the shared degenerate-case rule is: drop inactive (zero) gradients, weight 0.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from mtajax import attacks
from mtajax import balancing
from mtajax import directions
from mtajax import testing

P = 12


def _embed(v, rng):
  """Rows of v (T, k) mapped isometrically into R^P."""
  q, _ = np.linalg.qr(rng.normal(size=(P, P)))
  return v @ q[: v.shape[1]]


def gradient_set(kind, t, seed):
  """(T, P) float64 gradient sets of the named kind."""
  rng = np.random.default_rng(seed)
  if kind == "random":
    return rng.normal(size=(t, P))
  if kind == "conflict100":  # pairwise negative dots, norms 1 .. 100
    v = np.eye(t) - 1.0 / t + 0.05 * rng.normal(size=(t, t))
    v = np.concatenate([v, 0.3 * np.ones((t, 1))], axis=1) if t > 2 else v
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return _embed(v * np.logspace(0, 2, t)[rng.permutation(t), None], rng)
  g = rng.normal(size=(t, P))
  if kind == "parallel":
    g[1] = 3.0 * g[0]
  elif kind == "zero":
    g[t // 2] = 0.0
  return g


KINDS = ("random", "conflict100", "parallel", "zero")
CASES = [(k, t, s) for k in KINDS for t in (2, 3, 5) for s in (0, 1)]


def _active(g):
  sq = np.sum(g * g, axis=1)
  return sq > balancing.INACTIVE_TOL * sq.max()


def _on_active(rule, g):
  """Applies ``rule`` (active gradients -> weights) and scatters weights back, zeros elsewhere."""
  on = _active(g)
  w = np.zeros(len(g))
  w[on] = rule(g[on])
  return w


def _simplex_min(f, t):
  cons = ({"type": "eq", "fun": lambda w: np.sum(w) - 1},)
  best = None
  for start in [np.full(t, 1 / t)] + list(np.eye(t) * 0.9 + 0.1 / t):
    res = optimize.minimize(f, start, method="SLSQP", bounds=[(0, 1)] * t, constraints=cons,
                            options={"ftol": 1e-15, "maxiter": 1000})
    if best is None or res.fun < best.fun:
      best = res
  return np.clip(best.x, 0, None) / np.clip(best.x, 0, None).sum()


def ref_mgda(g):
  return _simplex_min(lambda w: np.sum((w @ g) ** 2) / np.sum(g * g, 1).max(), len(g))


def ref_pcgrad(g, order=None):
  t = len(g)
  order = np.tile(np.arange(t), (t, 1)) if order is None else order
  out = np.zeros(g.shape[1])
  for i in range(t):
    gi = g[i].copy()
    for j in order[i]:
      if j != i and gi @ g[j] < 0:
        gi -= (gi @ g[j]) / (g[j] @ g[j]) * g[j]
    out += gi
  return out


def ref_imtl_g_weights(g):
  u = g / np.linalg.norm(g, axis=1, keepdims=True)
  d, uu = g[:1] - g[1:], u[:1] - u[1:]
  a = np.linalg.lstsq((d @ uu.T).T, (g[0] @ uu.T), rcond=None)[0]
  alpha = np.concatenate([[1 - a.sum()], a])
  return alpha if (alpha @ g) @ u[0] >= 0 else -alpha


def ref_cagrad(g, c):
  t = len(g)
  gg = g @ g.T / np.sum(g * g, 1).max()
  g0 = g.mean(0)
  r = c * np.linalg.norm(g0)
  mean = np.full(t, 1 / t)
  f = lambda w: w @ gg @ mean + c * np.sqrt(mean @ gg @ mean) * np.sqrt(w @ gg @ w + 1e-14)
  w = _simplex_min(f, t)
  gw = w @ g
  return g0 + r * gw / np.linalg.norm(gw)


def ref_nash_alpha(g, ridge):
  m = g @ g.T
  m = m + ridge * np.diag(np.diag(m))
  f = lambda a: 0.5 * a @ m @ a - np.sum(np.log(a))
  jac = lambda a: m @ a - 1 / a
  a0 = 1 / np.sqrt(np.diag(m))
  res = optimize.minimize(f, a0, jac=jac, method="L-BFGS-B", bounds=[(1e-12, None)] * len(g),
                          options={"ftol": 1e-16, "gtol": 1e-12, "maxiter": 10000})
  return res.x


def _jax(fn, g, *args):
  return np.asarray(jax.jit(fn, static_argnums=tuple(range(1, 1 + len(args))))(
      jnp.asarray(g, jnp.float32), *args), np.float64)


def _close(got, want, tol):
  scale = max(np.linalg.norm(want), 1e-12)
  assert np.linalg.norm(got - want) <= tol * scale, (got, want)


@pytest.mark.parametrize("kind,t,seed", CASES)
def test_mgda_is_the_min_norm_point(kind, t, seed):
  g = gradient_set(kind, t, seed)
  d = _jax(balancing.mgda, g)
  want = _on_active(ref_mgda, g) @ g
  # The min-norm point d* is unique even where the weights are not.
  assert np.linalg.norm(d) <= np.linalg.norm(want) * (1 + 1e-4) + 1e-6
  _close(d, want, 2e-3)
  # Sener & Koltun: <d*, g_t> >= ||d*||^2 for every (active) task: a common ascent direction.
  on = _active(g)
  assert np.all(g[on] @ d >= np.sum(d * d) * (1 - 1e-3) - 1e-5 * np.sum(g * g, 1).max())


def test_mgda_t2_closed_form_and_no_common_direction():
  g = gradient_set("conflict100", 2, 3)
  g1, g2 = g
  gamma = np.clip((g2 - g1) @ g2 / np.sum((g1 - g2) ** 2), 0, 1)
  _close(_jax(balancing.mgda, g), gamma * g1 + (1 - gamma) * g2, 1e-4)
  # Opposite gradients: 0 is in the hull, no common ascent direction; MGDA returns 0.
  opposite = np.stack([g1, -2 * g1])
  assert np.linalg.norm(_jax(balancing.mgda, opposite)) < 1e-4 * np.linalg.norm(g1)


@pytest.mark.parametrize("kind,t,seed", CASES)
def test_pcgrad_against_paper_projection(kind, t, seed):
  g = gradient_set(kind, t, seed)
  _close(_jax(balancing.pcgrad, g), ref_pcgrad(g * _active(g)[:, None]), 1e-4)
  order = np.asarray(balancing.random_order(jax.random.PRNGKey(seed), t))
  assert sorted(order[0]) == list(range(t))
  got = np.asarray(balancing.pcgrad(jnp.asarray(g, jnp.float32), jnp.asarray(order)))
  _close(got, ref_pcgrad(g * _active(g)[:, None], order), 1e-4)


def test_pcgrad_two_tasks_ascends_both():
  g = gradient_set("conflict100", 2, 0)
  assert g[0] @ g[1] < 0
  d = _jax(balancing.pcgrad, g)
  assert np.all(g @ d > -1e-4 * np.linalg.norm(g, axis=1) * np.linalg.norm(d))


@pytest.mark.parametrize("kind,t,seed", CASES)
def test_imtl_g_equal_projections(kind, t, seed):
  g = gradient_set(kind, t, seed)
  w = _jax(lambda x: balancing.imtl_g_weights(balancing.gram(x)), g)
  d = w @ g
  on = _active(g)
  proj = (g[on] / np.linalg.norm(g[on], axis=1, keepdims=True)) @ d
  np.testing.assert_allclose(proj, proj[0], rtol=2e-3, atol=1e-4 * np.abs(proj).max())
  assert proj[0] > 0
  np.testing.assert_allclose(abs(w.sum()), 1.0, rtol=1e-4)
  assert np.all(w[~on] == 0)
  if kind in ("random", "conflict100", "zero"):  # a unique solution: compare with the paper's
    _close(w, _on_active(ref_imtl_g_weights, g), 2e-3)


@pytest.mark.parametrize("kind,t,seed", CASES)
@pytest.mark.parametrize("c", [0.0, 0.5, 2.0])
def test_cagrad_against_slsqp(kind, t, seed, c):
  g = gradient_set(kind, t, seed)
  d = _jax(balancing.cagrad, g, c)
  on = _active(g)
  want = np.zeros(P) if not on.any() else ref_cagrad(g[on], c) if c else g[on].mean(0)
  _close(d, want, 5e-3)
  # CAGrad's ball: ||d - g0|| = c ||g0||.
  g0 = g[on].mean(0)
  np.testing.assert_allclose(np.linalg.norm(d - g0), c * np.linalg.norm(g0), rtol=1e-3,
                             atol=1e-5 * np.linalg.norm(g0))


def test_cagrad_negative_radius_is_one_line_error():
  with pytest.raises(ValueError, match="c >= 0"):
    balancing.cagrad(jnp.ones((2, 3)), -0.1)


@pytest.mark.parametrize("kind,t,seed", CASES)
def test_nash_mtl_solves_the_bargaining_equation(kind, t, seed):
  g = gradient_set(kind, t, seed)
  ridge = 1e-4
  got = _jax(lambda x: balancing.nash_mtl_weights(balancing.gram(x), ridge), g)
  on = _active(g)
  want = _on_active(lambda h: ref_nash_alpha(h, ridge), g)
  _close(got, want, 2e-3)
  assert np.all(got[on] > 0) and np.all(got[~on] == 0)
  m = g[on] @ g[on].T
  m += ridge * np.diag(np.diag(m))
  np.testing.assert_allclose(m @ got[on], 1 / got[on], rtol=5e-3)


def test_nash_mtl_is_invariant_to_gradient_scale():
  g = gradient_set("conflict100", 3, 1)
  scaled = g * np.array([[5.0], [0.1], [1.0]])
  _close(_jax(balancing.nash_mtl, scaled), _jax(balancing.nash_mtl, g), 2e-3)
  opposite = np.stack([g[0], -g[0]])
  assert np.all(np.isfinite(_jax(balancing.nash_mtl, opposite)))


@pytest.mark.parametrize("rule", sorted(balancing.RULES))
def test_all_zero_or_nan_gradients_give_zero(rule):
  fn = balancing.RULES[rule]
  g = jnp.zeros((3, P)).at[1, 0].set(jnp.nan)
  w = fn(balancing.gram(g))
  np.testing.assert_array_equal(np.asarray(w), 0.0)
  assert np.all(np.isfinite(np.asarray(balancing.combine(g, w))))


@pytest.mark.parametrize("rule", sorted(balancing.RULES))
def test_rules_vmap_over_images(rule):
  g = np.stack([gradient_set(k, 3, 0) for k in KINDS])  # (B, T, P)
  fn = lambda x: balancing.RULES[rule](balancing.gram(x))
  batched = np.asarray(jax.jit(jax.vmap(fn))(jnp.asarray(g, jnp.float32)))
  for b in range(len(g)):
    np.testing.assert_allclose(batched[b], _jax(fn, g[b]), rtol=1e-5, atol=1e-6)


# --- The balancers as attack directions ------------------------------------------------------

NAMES = ("mgda", "pcgrad", "imtl_g", "cagrad", "nash_mtl")
REFS = {"mgda": lambda g: _on_active(ref_mgda, g) @ g,
        "pcgrad": lambda g: ref_pcgrad(g * _active(g)[:, None]),
        "imtl_g": lambda g: _on_active(ref_imtl_g_weights, g) @ g,
        "cagrad": lambda g: ref_cagrad(g[_active(g)], 0.5),
        "nash_mtl": lambda g: _on_active(lambda h: ref_nash_alpha(h, 1e-4), g) @ g}


def _toy(num_tasks=3, batch=2, size=16, seed=0):
  key = jax.random.PRNGKey(seed)
  params = testing.init(key, num_tasks, width=4)
  labels = (params, testing.random_labels(key, params, batch, size))
  x = jax.random.uniform(jax.random.PRNGKey(seed + 1), (batch, size, size, 3), minval=-100.0,
                         maxval=100.0)
  return x, labels


@pytest.mark.parametrize("name", NAMES)
def test_directions_by_name_match_the_per_image_reference(name):
  direction = directions.by_name(name)
  assert direction.name == name and direction.reduction == "image"
  x, labels = _toy()
  d, losses = jax.jit(lambda x_: direction(testing.loss_fn, x_, labels))(x)
  grads, _ = directions.per_task_grads(testing.loss_fn, x, labels)
  grads = np.asarray(grads, np.float64).reshape(grads.shape[0], x.shape[0], -1)
  assert set(losses) == set(testing.loss_fn(x, labels))
  for b in range(x.shape[0]):
    _close(np.asarray(d[b], np.float64).ravel(), REFS[name](grads[:, b]), 5e-3)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("attack", ["pgd", "apgd"])
def test_directions_drive_pgd_and_apgd(name, attack):
  x, labels = _toy(seed=3)
  direction = directions.by_name(name)
  eps = 8.0
  result = attacks.by_name(attack)(testing.loss_fn, x, labels, direction=direction, eps=eps,
                                   bounds=(-128.0, 128.0), num_steps=4)
  delta = np.asarray(result.x_adv - x)
  assert np.all(np.isfinite(delta)) and np.abs(delta).max() <= eps
  assert np.abs(delta).max() > 0.5 * eps  # the images moved
  objective = np.asarray(result.objective)
  assert np.all(np.isfinite(objective))
  assert objective[-1].mean() > objective[0].mean()  # the attack raised its objective
  clean = testing.loss_fn(x, labels)
  adv = testing.loss_fn(result.x_adv, labels)
  assert sum(float(jnp.mean(adv[t] / clean[t])) for t in clean) > len(clean)


def test_direction_options_and_errors():
  assert directions.by_name("cagrad", c=1.0).c == 1.0
  assert directions.by_name("pcgrad", seed=3).seed == 3
  with pytest.raises(ValueError, match="use c >= 0"):
    directions.by_name("cagrad", c=-0.5)
  with pytest.raises(ValueError, match="use ridge >= 0"):
    directions.by_name("nash_mtl", ridge=-1.0)
  with pytest.raises(ValueError, match="use iterations >= 1"):
    directions.by_name("nash_mtl", iterations=0)
  with pytest.raises(ValueError, match="unknown direction 'mgdaa'"):
    directions.by_name("mgdaa")
