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

from mtajax.directions import balancing

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


# --- Every rule against an independent implementation on small hand-made matrices -------------
#
# Published values: TorchJD's expected aggregations of J = [[-4, 1, 1], [6, 1, 1]] in
# tests/unit/aggregation/test_values.py of https://github.com/TorchJD/torchjd (AGGREGATOR_
# PARAMETRIZATIONS; the same numbers as the "A(J)" examples of https://torchjd.org/docs/aggregation/),
# printed there to 4 decimals and checked at atol 1e-4.
J_BASE = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
TORCHJD = {
    "mgda": [0.0, 1.0, 1.0],  # MGDA()
    "pcgrad": [0.5848, 3.8012, 3.8012],  # PCGrad(): a sum, as ours
    "imtl_g": [0.0767, 1.0000, 1.0000],  # IMTLG()
    "cagrad": [0.1835, 1.2041, 1.2041],  # CAGrad(c=0.5)
    "nash_mtl": [0.0542, 0.7061, 0.7061],  # NashMTL(n_tasks=2): clipped to norm max_norm = 1
    "upgrad": [0.2929, 1.9004, 1.9004],  # UPGrad(): a mean, as ours
    "aligned_mtl": [0.2133, 0.9673, 0.9673],  # AlignedMTL(): a mean, as ours
}
# TorchJD's UPGradWeighting weights of the same J (its docs' example, torchjd.aggregation's
# module docstring, and tests/doc/test_aggregation.py).
TORCHJD_UPGRAD_WEIGHTS = [1.1109, 0.7894]


@pytest.mark.parametrize("rule", sorted(TORCHJD))
def test_rules_match_torchjd_published_values(rule):
  got = _jax(lambda x: balancing.combine(x, balancing.RULES[rule](balancing.gram(x))), J_BASE)
  want = np.asarray(TORCHJD[rule])
  if rule == "nash_mtl":  # TorchJD rescales Nash-MTL's direction to norm 1: compare up to scale.
    got = got / np.linalg.norm(got)
  # UPGrad: TorchJD adds 1e-4·I to the trace-normalised Gramian (reg_eps), ours is the exact
  # projection; that moves the first entry by 5e-4 (the regularised problem is checked below).
  tol = 1e-3 if rule == "upgrad" else 1e-4
  np.testing.assert_allclose(got, want, rtol=0, atol=tol)


def test_dual_cone_projection_matches_torchjd_regularised_weights():
  # TorchJD's UPGradWeighting: U = diag(1/m), G = J Jᵀ / tr(J Jᵀ) + 1e-4·I, w = Σ_i argmin
  # vᵀGv s.t. v ≥ U_i (quadprog). Our face-enumeration QP on the same G gives its 4 decimals.
  g = J_BASE @ J_BASE.T
  g = jnp.asarray(g / np.trace(g) + 1e-4 * np.eye(2), jnp.float32)
  on = jnp.ones(2, bool)
  w = jnp.sum(balancing.dual_cone_weights(g, jnp.eye(2) / 2, on), axis=0)
  np.testing.assert_allclose(np.asarray(w), TORCHJD_UPGRAD_WEIGHTS, rtol=0, atol=1e-4)


# NumPy transcriptions of the authors' / library code, for the matrices without published values.
# Each is applied to the active rows and its weights scattered back (our shared degenerate rule;
# the original code divides by zero on a zero row).


def lib_mgda_weights(g, epsilon=1e-10, max_iters=20000):
  """TorchJD MGDAWeighting (Frank-Wolfe, Sener & Koltun Alg. 2), run to convergence."""
  m = g @ g.T
  alpha = np.full(len(g), 1 / len(g))
  for _ in range(max_iters):
    t = np.argmin(m @ alpha)
    e = np.eye(len(g))[t]
    a, b, c = alpha @ m @ e, alpha @ m @ alpha, e @ m @ e
    gamma = 1.0 if c <= a else 0.0 if b <= a else (b - a) / (b + c - 2 * a)
    alpha = (1 - gamma) * alpha + gamma * e
    if gamma < epsilon:
      break
  return alpha


def lib_pcgrad(g):
  """LibMTL PCGrad.backward, in the fixed order 0..T−1 instead of random.shuffle."""
  pc = g.copy()
  for i in range(len(g)):
    for j in range(len(g)):
      g_ij = pc[i] @ g[j]
      if g_ij < 0:
        pc[i] -= g_ij * g[j] / (g[j] @ g[j])
  return pc.sum(0)


def lib_imtl_g_weights(g):
  """LibMTL IMTL.backward's closed form (the gradient part, loss scales at 0)."""
  unit = g / np.linalg.norm(g, axis=1, keepdims=True)
  d, u = g[:1] - g[1:], unit[:1] - unit[1:]
  alpha = (g[0] @ u.T) @ np.linalg.inv(d @ u.T)
  return np.concatenate([[1 - alpha.sum()], alpha])


def lib_cagrad(g, calpha=0.5):
  """LibMTL CAGrad.backward (rescale=0): SLSQP on the dual, then g0 + λ g_w."""
  gg = g @ g.T
  t = len(g)
  g0_norm = np.sqrt(gg.mean() + 1e-8)
  x0 = np.ones(t) / t
  c = calpha * g0_norm + 1e-8
  obj = lambda x: x @ gg @ x0 + c * np.sqrt(x @ gg @ x + 1e-8)
  res = optimize.minimize(obj, x0, bounds=[(0, 1)] * t,
                          constraints=({"type": "eq", "fun": lambda x: 1 - x.sum()},),
                          options={"ftol": 1e-12, "maxiter": 1000})  # LibMTL: the defaults
  gw = res.x @ g
  return g.mean(0) + c / (np.linalg.norm(gw) + 1e-8) * gw


def lib_upgrad_weights(g, reg_eps=0.0):
  """TorchJD/LibMTL UPGrad: Σ_i argmin vᵀGv s.t. v ≥ e_i/T with G the trace-normalised Gramian.

  quadprog (not installed here) is replaced by SciPy's SLSQP, and reg_eps is 0 for the exact
  projection (TorchJD's 1e-4 is checked on J_BASE above).
  """
  gg = g @ g.T
  gg = gg / np.trace(gg) + reg_eps * np.eye(len(g))
  total = np.zeros(len(g))
  for u in np.eye(len(g)) / len(g):
    res = optimize.minimize(lambda v: v @ gg @ v, u, jac=lambda v: 2 * gg @ v, method="SLSQP",
                            bounds=[(ui, None) for ui in u], options={"ftol": 1e-16, "maxiter": 1000})
    total += res.x
  return total


def lib_aligned_mtl_weights(g):
  """LibMTL Aligned_MTL.backward (B.sum(0)); ÷T for TorchJD's/our mean."""
  m = g @ g.T
  lam, v = np.linalg.eigh(m)
  tol = lam.max() * len(m) * np.finfo(np.float32).eps
  rank = int(np.sum(lam > tol))
  order = np.argsort(lam)[::-1]
  lam, v = lam[order][:rank], v[:, order][:, :rank]
  b = np.sqrt(lam[-1]) * (v @ np.diag(1 / np.sqrt(lam)) @ v.T)
  return b.sum(0) / len(g)


LIB = {
    "mgda": lambda g: _on_active(lib_mgda_weights, g) @ g,
    "pcgrad": lambda g: lib_pcgrad(g * _active(g)[:, None]),
    "imtl_g": lambda g: _on_active(lib_imtl_g_weights, g) @ g,
    "cagrad": lambda g: lib_cagrad(g[_active(g)]),
    # The authors' Nash-MTL iterates cvxpy/ECOS problems (not installed here); the published
    # J_BASE value above is its independent check, this the paper's equation solved by SciPy.
    "nash_mtl": lambda g: _on_active(lambda h: ref_nash_alpha(h, 1e-4), g) @ g,
    "upgrad": lambda g: _on_active(lib_upgrad_weights, g) @ g,
    "aligned_mtl": lambda g: _on_active(lib_aligned_mtl_weights, g) @ g,
}
SMALL = {
    "2x3": J_BASE,
    "3x4": np.array([[1.0, -1.0, 2.0, 0.0], [-2.0, 1.0, 0.0, 1.0], [0.5, 2.0, -1.0, 1.0]]),
    "conflicting_pair": np.array([[3.0, 1.0], [-2.0, 0.5]]),  # g1·g2 = −5.5
    "zero_row": np.array([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [2.0, -1.0, 1.0]]),
}


@pytest.mark.parametrize("matrix", sorted(SMALL))
@pytest.mark.parametrize("rule", sorted(LIB))
def test_rules_match_transcribed_library_code(rule, matrix):
  g = SMALL[matrix]
  got = _jax(lambda x: balancing.combine(x, balancing.RULES[rule](balancing.gram(x))), g)
  want = LIB[rule](g)
  assert np.all(np.isfinite(got))
  _close(got, want, 2e-3)
  if matrix == "zero_row":
    w = _jax(lambda x: balancing.RULES[rule](balancing.gram(x)), g)
    assert w[1] == 0


@pytest.mark.parametrize("rule", sorted(balancing.RULES))
def test_one_task_and_equal_gradients_give_that_gradient_up_to_scale(rule):
  g1 = np.array([[1.0, -2.0, 0.5]])
  d = _jax(lambda x: balancing.combine(x, balancing.RULES[rule](balancing.gram(x))), g1)
  _close(d / np.linalg.norm(d), g1[0] / np.linalg.norm(g1[0]), 1e-5)
  same = np.repeat(g1, 3, axis=0)
  d = _jax(lambda x: balancing.combine(x, balancing.RULES[rule](balancing.gram(x))), same)
  _close(d / np.linalg.norm(d), g1[0] / np.linalg.norm(g1[0]), 1e-4)


@pytest.mark.parametrize("kind,t,seed", CASES)
@pytest.mark.parametrize("rule", ["upgrad", "aligned_mtl"])
def test_new_rules_against_transcriptions_on_random_sets(rule, kind, t, seed):
  g = gradient_set(kind, t, seed)
  got = _jax(lambda x: balancing.combine(x, balancing.RULES[rule](balancing.gram(x))), g)
  _close(got, LIB[rule](g), 2e-3)
