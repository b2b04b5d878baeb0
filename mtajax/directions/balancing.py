"""Multi-task gradient balancing rules on one image's task gradients G (T, P): pure functions.

A leaf module (it imports nothing from mtajax); :mod:`mtajax.directions.balanced` turns each rule
into an attack direction.

Every rule returns task weights α (T,) computed from the T×T Gram matrix ``G Gᵀ`` only (formed
once per image); the balanced direction is ``d = αᵀ G`` (:func:`combine`). Callers vmap over
images. The rules, as published for gradient *descent* on losses, carry over to ascent unchanged:
they depend on the gradients only through inner products, which a global sign flip leaves alone.

===============  =================================================================================
rule             weights
===============  =================================================================================
``mgda``         min-norm point of the convex hull of {g_t} (Sener & Koltun, arXiv 1810.04650),
                 solved exactly by enumerating the simplex faces (2^T − 1 small KKT solves).
``pcgrad``       PCGrad (Yu et al., arXiv 2001.06782): each g_i projected, in ``order[i]``, onto the
                 normal plane of every g_j (j ≠ i) it conflicts with (g_i^PC·g_j < 0), then summed;
                 tracked as coefficients, so it is a weight vector too.
``imtl_g``       IMTL-G (Liu et al., ICLR'21): Σα = 1 and equal projection of d on every unit
                 gradient u_t, i.e. α ∝ M⁺n with n_t = ‖g_t‖ (M⁺ = pseudo-inverse).
``cagrad``       CAGrad (Liu et al., arXiv 2110.14048): d = g₀ + r·g_w/‖g_w‖, r = c‖g₀‖, g₀ the mean
                 gradient, w = argmin_{w∈Δ} g_wᵀg₀ + r‖g_w‖ (majorise-minimise: exact simplex QPs).
``nash_mtl``     Nash-MTL (Navon et al., arXiv 2202.01017): α > 0 with (M + δ·diag(M))α = 1/α,
                 the minimiser of ½αᵀMα − Σ log α_t, by damped Newton.
``upgrad``       UPGrad (Quinton & Rey, arXiv 2406.16232; TorchJD): the mean of every g_t projected
                 onto the dual cone {d : g_sᵀd ≥ 0 ∀s}, each projection an exact QP (face
                 enumeration, as MGDA).
``aligned_mtl``  Aligned-MTL (Senushkin et al., CVPR'23): α = B·1/T with B = √λ_R V Λ^(−1/2) Vᵀ
                 from the eigendecomposition M = VΛVᵀ truncated at the numerical rank (λ_R the
                 smallest kept): the gradients made orthogonal, each of the smallest singular value.
===============  =================================================================================

Degenerate cases (one rule for all): a task is *inactive* when its gradient is zero, not finite,
or ``‖g_t‖² ≤ INACTIVE_TOL · max_s ‖g_s‖²``; inactive tasks get weight 0 and the rule is applied
to the active ones (a zero gradient cannot be raised to first order, and left in it would make
MGDA's min-norm point 0). With no active task α = 0. Parallel or otherwise singular sets are
handled by the solvers themselves: MGDA, CAGrad and UPGrad keep only faces whose system has a
feasible solution (the minimal face holding the optimum always does), IMTL-G uses the
pseudo-inverse, Aligned-MTL drops the eigenvalues under its rank tolerance (max λ · T · float eps,
as the authors' code), and Nash-MTL's ridge δ gives a unique α even where the exact equation has
none (e.g. g₂ = −g₁). IMTL-G's Σα = 1 can make d a common *descent* direction (Σ M⁺n < 0 with
100× norm differences); the sign is then flipped (α = M⁺n / |Σ M⁺n|) so that every unit gradient
has the same positive projection.
"""

from __future__ import annotations

import itertools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
WeightRule = Callable[[Array], Array]

INACTIVE_TOL = 1e-10
_HIGHEST = jax.lax.Precision.HIGHEST


def check_at_least(rule: str, option: str, value: float, low: float) -> None:
  """One-line ValueError unless ``value >= low`` (NaN fails too)."""
  if not value >= low:
    raise ValueError(f"{rule} option {option}={value} is out of range; use {option} >= {low:g}.")


def gram(grads: Array) -> Array:
  """G Gᵀ (T, T) of task gradients (T, ...), rows that are not finite set to zero first."""
  g = finite_rows(grads).reshape(grads.shape[0], -1)
  return jnp.einsum("tp,sp->ts", g, g, precision=_HIGHEST)


def finite_rows(grads: Array) -> Array:
  """Task gradients (T, ...) with every task whose gradient has a NaN/inf entry set to zero."""
  ok = jnp.all(jnp.isfinite(grads.reshape(grads.shape[0], -1)), axis=1)
  return jnp.where(ok.reshape((-1,) + (1,) * (grads.ndim - 1)), grads, 0.0)


def combine(grads: Array, weights: Array) -> Array:
  """d = Σ_t α_t g_t for gradients (T, ...) and weights (T,)."""
  return jnp.tensordot(weights, finite_rows(grads), axes=1, precision=_HIGHEST)


def active(m: Array) -> Array:
  """(T,) bool: tasks whose gradient is not negligible (see the module docstring)."""
  d = jnp.diagonal(m)
  ok = jnp.isfinite(d)
  d = jnp.where(ok, d, 0.0)
  return ok & (d > 0) & (d > INACTIVE_TOL * jnp.max(d))


def _normalised(m: Array) -> tuple[Array, Array, Array]:
  """M / max diag over active tasks (inactive rows/cols zeroed), the scale and the active mask."""
  on = active(m)
  both = on[:, None] & on[None, :]
  m = jnp.where(both, m, 0.0)
  scale = jnp.max(jnp.where(on, jnp.diagonal(m), 0.0))
  scale = jnp.where(scale > 0, scale, 1.0)
  return m / scale, scale, on


def _faces(t: int) -> np.ndarray:
  """(2^T − 1, T) bool: every non-empty subset of the T tasks."""
  return np.array([s for s in itertools.product([False, True], repeat=t) if any(s)])


def face_solutions(m: Array, b: Array, on: Array) -> tuple[Array, Array]:
  """Per simplex face S of the active tasks, the KKT solutions of ``min ½κwᵀMw + bᵀw, Σw = 1``.

  Returns (u, v), each (faces, T): for every κ > 0 the face's solution is ``u/κ + v`` (u solves
  the KKT system with right-hand side (−b, 0), v with (0, 1)), so a family of QPs costs one
  batched solve. Singular faces give non-finite rows, which :func:`best_on_faces` rejects.
  """
  t = m.shape[0]
  faces = jnp.asarray(_faces(t)) & on[None, :]
  eye = jnp.eye(t, dtype=m.dtype)

  def solve(face):
    kkt = jnp.where(face[:, None] & face[None, :], m, eye * ~face[:, None])
    ones = face.astype(m.dtype)
    kkt = jnp.block([[kkt, ones[:, None]], [ones[None, :], jnp.zeros((1, 1), m.dtype)]])
    rhs = jnp.stack([jnp.concatenate([jnp.where(face, -b, 0.0), jnp.zeros(1, m.dtype)]),
                     jnp.concatenate([jnp.zeros(t, m.dtype), jnp.ones(1, m.dtype)])], axis=1)
    z = jnp.linalg.solve(kkt, rhs)[:t]
    return jnp.where(face, z[:, 0], 0.0), jnp.where(face, z[:, 1], 0.0), jnp.any(face)

  u, v, nonempty = jax.vmap(solve)(faces)
  bad = ~nonempty[:, None]
  return jnp.where(bad, jnp.nan, u), jnp.where(bad, jnp.nan, v)


def best_on_faces(ws: Array, value: Callable[[Array], Array], on: Array) -> Array:
  """The feasible candidate (w ≥ 0, Σw = 1, finite) of ``ws`` (faces, T) with the least value.

  Exact for a convex QP: the minimal face holding a minimiser has a unique, nonsingular solution.
  """
  ok = jnp.all(jnp.isfinite(ws), axis=1) & jnp.all(ws >= -1e-6, axis=1)
  ok &= jnp.abs(jnp.sum(ws, axis=1) - 1) < 1e-4
  ws = jnp.where(ok[:, None], jnp.clip(ws, 0.0), 0.0)
  ws = ws / jnp.where(ok, jnp.sum(ws, axis=1), 1.0)[:, None]
  values = jax.vmap(value)(ws)
  best = ws[jnp.argmin(jnp.where(ok & jnp.isfinite(values), values, jnp.inf))]
  return jnp.where(jnp.any(on), best, 0.0)


def mgda_weights(m: Array) -> Array:
  """MGDA: convex weights of the min-norm point of the hull of the active gradients."""
  m, _, on = _normalised(m)
  _, v = face_solutions(m, jnp.zeros(m.shape[0], m.dtype), on)
  return best_on_faces(v, lambda w: w @ m @ w, on)


def pcgrad_weights(m: Array, order: Array | None = None) -> Array:
  """PCGrad as weights: Σ_i of each projected g_i^PC, written in the basis {g_t}.

  Args:
    m: Gram matrix (T, T).
    order: (T, T) int, row i the order in which task i meets the others (its own index and
      inactive tasks are skipped); None = 0, 1, ..., T−1 for every task.
  """
  m, _, on = _normalised(m)
  t = m.shape[0]
  order = jnp.tile(jnp.arange(t), (t, 1)) if order is None else jnp.asarray(order)
  diag = jnp.where(on, jnp.diagonal(m), 1.0)
  total = jnp.zeros(t, m.dtype)
  for i in range(t):
    c = jnp.zeros(t, m.dtype).at[i].set(1.0)
    for k in range(t):
      j = order[i, k]
      dot = c @ m[:, j]
      conflict = (j != i) & on[j] & (dot < 0)
      c = c - jnp.where(conflict, dot / diag[j], 0.0) * jax.nn.one_hot(j, t, dtype=m.dtype)
    total = total + jnp.where(on[i], c, 0.0)
  return total


def imtl_g_weights(m: Array) -> Array:
  """IMTL-G: α ∝ M⁺n (n_t = ‖g_t‖), scaled so Σα = ±1 with a positive common projection."""
  m, _, on = _normalised(m)
  n = jnp.sqrt(jnp.where(on, jnp.diagonal(m), 1.0))
  # M⁺n = N⁻¹C⁺1 with C = N⁻¹MN⁻¹ the cosine matrix: norms differing 100× leave C well-conditioned.
  cos = m / (n[:, None] * n[None, :])
  beta = jnp.where(on, jnp.linalg.pinv(cos, rtol=1e-6, hermitian=True) @ on.astype(m.dtype), 0.0)
  beta = beta / n
  s, l1 = jnp.abs(jnp.sum(beta)), jnp.sum(jnp.abs(beta))
  s = jnp.where(s > 1e-6 * l1, s, l1)
  return beta / jnp.where(s > 0, s, 1.0)


def cagrad_weights(m: Array, c: float = 0.5, iterations: int = 20) -> Array:
  """CAGrad: weights of d = g₀ + (c‖g₀‖/‖g_w‖) g_w over the active tasks.

  The dual ``min_{w∈Δ} g_wᵀg₀ + r‖g_w‖`` is solved by majorise-minimise: ``r‖g_w‖ ≤
  r(‖g_w‖²/s + s)/2`` with s = ‖g_w‖ at the last iterate turns each step into an exact simplex QP.
  """
  check_at_least("CAGrad", "c", c, 0)
  m, _, on = _normalised(m)
  mean = on / jnp.maximum(jnp.sum(on), 1)
  g0_norm = jnp.sqrt(jnp.maximum(mean @ m @ mean, 0.0))
  r = c * g0_norm
  b = m @ mean

  def norm(w):
    return jnp.sqrt(jnp.maximum(w @ m @ w, 0.0))

  u, v = face_solutions(m, b, on)

  def body(_, w):  # the QP min_w (κ/2)wᵀMw + bᵀw with κ = r/‖g_w‖ (floored: finite u/κ)
    kappa = jnp.maximum(r / jnp.maximum(norm(w), 1e-6 * g0_norm + 1e-30), 1e-12)
    return best_on_faces(u / kappa + v, lambda w_: 0.5 * kappa * w_ @ m @ w_ + b @ w_, on)

  w = jax.lax.fori_loop(0, iterations, body, mean)
  gw = norm(w)
  return mean + jnp.where(gw > 0, r / jnp.where(gw > 0, gw, 1.0), 0.0) * w


def nash_mtl_weights(m: Array, ridge: float = 1e-4, iterations: int = 40) -> Array:
  """Nash-MTL: α > 0 solving (M + δ·diag(M)) α = 1/α on the active tasks (δ = ``ridge``).

  The ridge is relative to each task's own ‖g_t‖², so α_t g_t stays invariant to rescaling a task.

  Damped Newton on the self-concordant ``½αᵀMα − Σ log α`` (step 1/(1 + λ) while the Newton
  decrement λ ≥ 1/4, full steps after), started at the best multiple of 1/√diag(M). Solved on
  M/s and rescaled by 1/√s, so α has the exact scale of the published equation.
  """
  check_at_least("Nash-MTL", "ridge", ridge, 0)
  m, scale, on = _normalised(m)
  t = m.shape[0]
  eye = jnp.eye(t, dtype=m.dtype)
  m = m + ridge * jnp.diag(jnp.diagonal(m))
  m = jnp.where(on[:, None] & on[None, :], m, eye)  # inactive tasks decouple; zeroed below
  u = jax.lax.rsqrt(jnp.diagonal(m))
  alpha = u * jnp.sqrt(t / (u @ m @ u))

  def body(_, a):
    grad = m @ a - 1 / a
    hess = m + jnp.diag(1 / a**2)
    step = jnp.linalg.solve(hess, grad)
    lam = jnp.sqrt(jnp.maximum(step @ grad, 0.0))
    size = jnp.where(lam < 0.25, 1.0, 1 / (1 + lam))
    new = a - size * step
    return jnp.where(jnp.all(new > 0) & jnp.all(jnp.isfinite(new)), new, a)

  alpha = jax.lax.fori_loop(0, iterations, body, alpha)
  return jnp.where(on, alpha, 0.0) / jnp.sqrt(scale)


def dual_cone_weights(m: Array, u: Array, on: Array) -> Array:
  """Rows w (K, T) with Gᵀw the projection of Gᵀu (u: (K, T)) onto the dual cone {d : G d ≥ 0}.

  By Quinton & Rey (arXiv 2406.16232, Prop. 1) each w solves ``min wᵀMw s.t. w ≥ u``; solved
  exactly by enumerating the faces: with F the free tasks and the others held at u, ``w_F =
  −M_FF⁺ M_F· u_held``. The minimiser with the most tasks held has a nonsingular M_FF, so the
  least value over the feasible candidates is the optimum. Inactive tasks are held at 0.
  """
  t = m.shape[0]
  u = jnp.where(on, u, 0.0)
  free = jnp.asarray(np.concatenate([np.zeros((1, t), bool), _faces(t)])) & on[None, :]
  pinvs = jax.vmap(lambda f: jnp.linalg.pinv(jnp.where(f[:, None] & f[None, :], m, 0.0),
                                             rtol=1e-6, hermitian=True))(free)

  def project(u_):
    held = jnp.where(free, 0.0, u_)  # (faces, T)
    ws = jnp.where(free, -jnp.einsum("fts,fs->ft", pinvs, held @ m, precision=_HIGHEST), held)
    ok = jnp.all(jnp.isfinite(ws), axis=1) & jnp.all(ws >= u_ - 1e-6, axis=1)
    ws = jnp.maximum(ws, u_)
    values = jnp.einsum("ft,ts,fs->f", ws, m, ws, precision=_HIGHEST)
    return ws[jnp.argmin(jnp.where(ok & jnp.isfinite(values), values, jnp.inf))]
  return jax.vmap(project)(u)


def upgrad_weights(m: Array) -> Array:
  """UPGrad: the mean over the active tasks of each g_t projected onto their dual cone."""
  m, _, on = _normalised(m)
  u = jnp.diag(on / jnp.maximum(jnp.sum(on), 1)).astype(m.dtype)
  return jnp.where(on, jnp.sum(dual_cone_weights(m, u, on), axis=0), 0.0)


def aligned_mtl_weights(m: Array) -> Array:
  """Aligned-MTL: α = B·1/n, B = √λ_R · V Λ^(−1/2) Vᵀ over the eigenpairs of M above the rank
  tolerance (λ_R the smallest kept), i.e. the active gradients made orthogonal and of equal norm
  (the smallest singular value), then averaged."""
  m, _, on = _normalised(m)
  lam, v = jnp.linalg.eigh(m)
  keep = lam > jnp.max(lam) * m.shape[0] * jnp.finfo(m.dtype).eps
  lam_r = jnp.min(jnp.where(keep, lam, jnp.inf))
  scale = jnp.where(keep, jnp.sqrt(lam_r / jnp.where(keep, lam, 1.0)), 0.0)
  b = (v * scale) @ v.T
  mean = on / jnp.maximum(jnp.sum(on), 1)
  return jnp.where(on & jnp.any(keep), b @ mean, 0.0)


RULES: dict[str, WeightRule] = {
    "mgda": mgda_weights,
    "pcgrad": pcgrad_weights,
    "imtl_g": imtl_g_weights,
    "cagrad": cagrad_weights,
    "nash_mtl": nash_mtl_weights,
    "upgrad": upgrad_weights,
    "aligned_mtl": aligned_mtl_weights,
}


def mgda(grads: Array) -> Array:
  """MGDA direction of one image's task gradients (T, ...)."""
  return combine(grads, mgda_weights(gram(grads)))


def pcgrad(grads: Array, order: Array | None = None) -> Array:
  """PCGrad direction of one image's task gradients (T, ...)."""
  return combine(grads, pcgrad_weights(gram(grads), order))


def imtl_g(grads: Array) -> Array:
  """IMTL-G direction of one image's task gradients (T, ...)."""
  return combine(grads, imtl_g_weights(gram(grads)))


def cagrad(grads: Array, c: float = 0.5) -> Array:
  """CAGrad direction of one image's task gradients (T, ...)."""
  return combine(grads, cagrad_weights(gram(grads), c))


def nash_mtl(grads: Array, ridge: float = 1e-4) -> Array:
  """Nash-MTL direction of one image's task gradients (T, ...)."""
  return combine(grads, nash_mtl_weights(gram(grads), ridge))


def upgrad(grads: Array) -> Array:
  """UPGrad direction of one image's task gradients (T, ...)."""
  return combine(grads, upgrad_weights(gram(grads)))


def aligned_mtl(grads: Array) -> Array:
  """Aligned-MTL direction of one image's task gradients (T, ...)."""
  return combine(grads, aligned_mtl_weights(gram(grads)))


def random_order(key: Array, num_tasks: int) -> Array:
  """(T, T) int: an independent random task order for every task (PCGrad's shuffled order)."""
  keys = jax.random.split(key, num_tasks)
  return jax.vmap(lambda k: jax.random.permutation(k, num_tasks))(keys)
