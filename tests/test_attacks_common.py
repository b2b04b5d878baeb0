"""Attack core (attacks/common.py): NaN-safe objectives, compile once on the README's paths, user
directions, attack-loss context, targeted attacks, result fields."""

import functools

from flax import nnx
from hypothesis import given, settings, strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtajax import attacks
from mtajax import directions as D
from mtajax import models
from mtajax import tasks as tasks_lib
from mtajax import testing
from mtajax.train import load

from fixtures import BOUNDS, EPS, masked_loss, masked_problem


def test_gbmta_apgd_with_an_image_without_valid_pixels_attacks_every_image():
  """The issue's repro: one image's first task has no valid pixel (loss 0, baseline 0)."""
  x, labels = masked_problem()
  out = attacks.apgd(masked_loss, x, labels, direction=D.gbmta(), eps=0.3, bounds=(-2.0, 2.0),
                     num_steps=10)
  assert np.all(np.isfinite(out.objective))
  moved = np.max(np.abs(np.asarray(out.x_adv) - x), axis=(1, 2, 3))
  assert np.all(moved > 0.1), moved
  assert out.objective[-1, 0] > out.objective[0, 0]
  best = attacks.pgd(masked_loss, x, labels, direction=D.gbmta(), eps=0.3, bounds=(-2.0, 2.0),
                     num_steps=5, return_best=True)
  assert np.all(np.isfinite(best.objective))
  assert np.all(np.max(np.abs(np.asarray(best.x_adv) - x), axis=(1, 2, 3)) > 0.1)


# ------------------------------------------------------------------------------------------------
# Properties of every attack x direction on a loss with an identically-zero task and images
# without a valid pixel.

def zero_task_loss(x, labels):
  return {**masked_loss(x, labels), "zero": 0.0 * jnp.mean(x, axis=(1, 2, 3))}


BEST = [("pgd", {"return_best": True}), ("apgd", {}), ("apgd", {"per_sample": True}),
        ("apgd", {"variant": "autoattack"})]
DIRECTIONS = ["single_plain", "total", "sign_total", "gbmta"]


def objective_at(direction, x, labels, x0):
  """Per-image objective at x with the attack's default state (the losses at x0)."""
  losses0 = zero_task_loss(x0, labels)
  state = direction.init(zero_task_loss, x0, labels, losses0)
  return np.asarray(direction.objective(zero_task_loss(jnp.asarray(x), labels), state))


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("attack,options", BEST, ids=lambda v: str(v))
@settings(max_examples=3, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2 ** 16), eps=st.floats(0.05, 0.5), empty=st.sampled_from([(), (0,)]))
def test_best_point_attacks_never_lower_the_objective(attack, options, direction, seed, eps,
                                                      empty):
  x, labels = masked_problem(seed=seed, empty=empty)
  d = D.by_name(direction)
  out = attacks.by_name(attack)(zero_task_loss, x, labels, direction=d, eps=eps,
                                bounds=(-2.0, 2.0), num_steps=4, **options)
  assert np.all(np.isfinite(out.objective))  # "plain" is usable for every image.
  f0, f = objective_at(d, x, labels, x), objective_at(d, out.x_adv, labels, x)
  if attack == "apgd" and not options:  # The reference's batch objective (Q7).
    assert f.mean() >= f0.mean() - 1e-5 * abs(f0.mean()) - 1e-6
  else:
    assert np.all(f >= f0 - 1e-5 * np.abs(f0) - 1e-6), (f, f0)
  moved = np.max(np.abs(np.asarray(out.x_adv) - x), axis=(1, 2, 3))
  if direction == "sign_total":  # A vote can cancel (no ascent): then nothing better was found.
    assert np.all((moved > 0) | np.isclose(f, f0)), moved
  else:  # Gradients of their objective: every image with a usable task moves.
    assert np.all(moved > 0), moved
  assert np.max(np.abs(np.asarray(out.x_adv) - x)) <= eps + 1e-6


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_last_iterate_attacks_move_every_image_with_a_usable_task(attack, direction):
  x, labels = masked_problem(empty=(0, 2))
  d = D.by_name(direction)
  out = attacks.by_name(attack)(zero_task_loss, x, labels, direction=d, eps=0.2,
                                bounds=(-2.0, 2.0))
  assert np.all(np.isfinite(out.objective))
  moved = np.max(np.abs(np.asarray(out.x_adv) - x), axis=(1, 2, 3)) > 0
  ascent = np.max(np.abs(np.asarray(d(zero_task_loss, jnp.asarray(x), labels)[0])),
                  axis=(1, 2, 3)) > 0
  assert np.all(moved | ~ascent) and np.sum(ascent) >= 2  # (A SignTotal vote can cancel.)


# ------------------------------------------------------------------------------------------------
# Compile once on the README's own paths; weights traced, never baked in.

def small_model():
  model = models.build_model("small", {"segment_semantic": 4, "depth_zbuffer": 1}, 0, width=4,
                             rngs=nnx.Rngs(0))
  tasks = (tasks_lib.Segmentation(name="segment_semantic", channels=4),
           tasks_lib.Depth(name="depth_zbuffer", channels=1))
  return model, tasks


def small_batch(seed, b=2, size=16):
  rng = np.random.default_rng(seed)
  return {"image": rng.uniform(-50, 50, (b, size, size, 3)).astype(np.float32),
          "segment_semantic": rng.integers(0, 4, (b, size, size)).astype(np.int32),
          "depth_zbuffer": rng.uniform(0.5, 3, (b, size, size)).astype(np.float32),
          "depth_zbuffer_mask": np.ones((b, size, size), np.float32)}


@pytest.mark.parametrize("attack", ["pgd", "apgd"])
def test_readme_loss_fn_rebuilt_per_batch_compiles_once_and_keeps_weights_traced(attack):
  model, tasks = small_model()
  predict, state = models.pure_predict(model)
  traces = []

  def counted(state_, x):
    traces.append(1)
    return predict(state_, x)
  direction = D.gbmta()
  outs = []
  for seed in range(3):
    batch = small_batch(seed)
    loss_fn = tasks_lib.make_loss_fn(functools.partial(counted, state), tasks, direction.reduction)
    outs.append(attacks.by_name(attack)(loss_fn, batch["image"], batch, direction=direction,
                                        eps=4.0, bounds=BOUNDS, num_steps=2).x_adv)
    if seed == 0:
      first = len(traces)
  assert len(traces) == first
  # New weights of the same shapes: no recompile, and a different result (weights are traced).
  state2 = jax.tree.map(lambda v: v * 1.5, state)
  batch = small_batch(2)
  loss_fn = tasks_lib.make_loss_fn(functools.partial(counted, state2), tasks, direction.reduction)
  out2 = attacks.by_name(attack)(loss_fn, batch["image"], batch, direction=direction, eps=4.0,
                                 bounds=BOUNDS, num_steps=2).x_adv
  assert len(traces) == first
  assert not np.array_equal(np.asarray(out2), np.asarray(outs[2]))


def test_loaded_model_loss_fn_per_batch_compiles_once():
  model, tasks = small_model()
  apply, params, batch_stats = models.pure_apply(model)
  calls = []

  def counted_apply(*args, **kwargs):
    calls.append(1)
    return apply(*args, **kwargs)
  loaded = load.LoadedModel(None, tasks, None, model, nnx.to_pure_dict(params),
                            nnx.to_pure_dict(batch_stats), 0, counted_apply)
  for seed in range(3):
    batch = small_batch(seed)
    attacks.pgd(loaded.loss_fn("pooled"), batch["image"], batch, direction=D.total(), eps=4.0,
                bounds=BOUNDS, num_steps=2)
    if seed == 0:
      first = len(calls)
  assert len(calls) == first
  leaves = jax.tree.leaves(loaded.loss_fn())
  assert leaves and all(isinstance(v, (jax.Array, np.ndarray)) for v in leaves)


# ------------------------------------------------------------------------------------------------
# Open directions.

class FixedWeights(D.Direction):
  """A user direction with start-of-attack state: Σ_t ∇L_t / c_t, c_t fixed at the start."""

  @property
  def name(self):
    return "fixed_weights"

  def init(self, loss_fn, x0, labels, losses0):
    return {t: jnp.maximum(v, 1e-6) for t, v in losses0.items()}

  def __call__(self, loss_fn, x, labels):
    grads, losses = D.per_task_grads(loss_fn, x, labels)
    return jnp.sum(grads, axis=0), losses

  def objective(self, losses, state=None):
    if state is None:
      return sum(losses.values())
    return sum(v / state[t] for t, v in losses.items())


def test_a_registered_user_direction_works_by_name_in_every_attack(setup):
  x0, labels = setup
  D.register("fixed_weights", FixedWeights)
  assert "fixed_weights" in D.registered()
  direction = D.by_name("fixed_weights")
  for name in ("fgsm", "pgd", "apgd"):
    kw = {} if name == "fgsm" else {"num_steps": 3}
    out = attacks.by_name(name)(testing.loss_fn, x0, labels, direction=direction, eps=EPS,
                                bounds=BOUNDS, **kw)
    assert np.max(np.abs(np.asarray(out.x_adv - x0))) > 0
    assert np.all(np.isfinite(out.objective))
  # APGD ascends the direction's own objective with its own start state.
  out = attacks.apgd(testing.loss_fn, x0, labels, direction=direction, eps=EPS, bounds=BOUNDS,
                     num_steps=5, per_sample=True)
  state = direction.init(testing.loss_fn, x0, labels, testing.loss_fn(x0, labels))
  np.testing.assert_allclose(out.objective[0], direction.objective(testing.loss_fn(x0, labels),
                                                                   state), rtol=1e-5)
  with pytest.raises(ValueError, match="Auto-SAGE supports directions"):
    attacks.auto_sage(testing.loss_fn, x0, labels, direction=direction, eps=EPS, bounds=BOUNDS)


# ------------------------------------------------------------------------------------------------
# The attack's context: iteration index and clean prediction.

class StepLoss:
  """A context-taking loss: reports the step weight 1 + k/N and the drift from the clean data."""
  takes_context = True

  def init_context(self, x0, labels):
    return {"mean": jnp.mean(x0, axis=(1, 2, 3))}

  def __call__(self, x, labels, context=None):
    losses = testing.loss_fn(x, labels)
    w = 1.0 + context.step.astype(x.dtype) / context.num_steps
    drift = jnp.abs(jnp.mean(x, axis=(1, 2, 3)) - context.clean["mean"])
    return {**losses, "weight": w * jnp.ones(x.shape[:1]), "drift": drift}


@pytest.mark.parametrize("attack", ["pgd", "apgd"])
def test_attack_losses_see_the_iteration_index_and_clean_data(setup, attack):
  x0, labels = setup
  n = 3
  out = getattr(attacks, attack)(StepLoss(), x0, labels, direction=D.total(), eps=EPS,
                                 bounds=BOUNDS, num_steps=n)
  weight = np.asarray(out.losses["weight"])[:n, 0]
  np.testing.assert_allclose(weight, 1.0 + np.arange(n) / n, rtol=1e-6)  # Iterate k sees step k.
  drift = np.asarray(out.losses["drift"])
  np.testing.assert_array_equal(drift[0], 0.0)  # At x0 the clean data is x0's own.
  assert np.all(drift[1:] > 0)
  plain = attacks.pgd(testing.loss_fn, x0, labels, direction=D.total(), eps=EPS, bounds=BOUNDS,
                      num_steps=n)
  for t, v in plain.losses.items():
    np.testing.assert_allclose(out.losses[t][0], v[0], rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# Targeted.

def dict_loss(x, labels):
  """The toy net's losses with labels as a dict (params under 'params'), as targets need."""
  preds = testing.apply(labels["params"], x)
  return testing.per_image_losses(preds, {t: labels[t] for t in preds})


@pytest.fixture(scope="module", name="dict_setup")
def fixture_dict_setup(setup):
  x0, (params, y) = setup
  targets = {"segment_semantic": jnp.zeros_like(y["segment_semantic"]),
             "depth_zbuffer": jnp.full_like(y["depth_zbuffer"], 0.5)}
  return x0, {"params": params, **y}, targets


@pytest.mark.parametrize("direction", ["total", "gbmta", "single_depth_zbuffer"])
@pytest.mark.parametrize("attack", ["fgsm", "pgd", "apgd"])
def test_targeted_attacks_decrease_every_targeted_loss(dict_setup, attack, direction):
  x0, labels, targets = dict_setup
  if direction.startswith("single_"):
    targets = {"depth_zbuffer": targets["depth_zbuffer"]}
  kw = {} if attack == "fgsm" else {"num_steps": 5}
  out = getattr(attacks, attack)(dict_loss, x0, labels, direction=D.by_name(direction), eps=EPS,
                                 bounds=BOUNDS, targets=targets, **kw)
  before = dict_loss(x0, {**labels, **targets})
  after = dict_loss(out.x_adv, {**labels, **targets})
  for t in targets:  # Every targeted loss decreases (over the batch; per image for one task).
    assert np.mean(after[t]) < np.mean(before[t]), (t, after[t], before[t])
    if len(targets) == 1 or direction == "total":
      assert np.all(np.asarray(after[t]) < np.asarray(before[t])), (t, after[t], before[t])
    np.testing.assert_allclose(out.losses[t][0], before[t], rtol=1e-4)  # Reported in loss units.
  if direction == "gbmta":  # Per image, the balanced sum of log target losses decreases.
    log_sum = lambda l: sum(np.log(np.asarray(l[t])) for t in targets)  # pylint: disable=unnecessary-lambda-assignment
    assert np.all(log_sum(after) < log_sum(before))
  assert set(out.losses) == set(targets)  # Untargeted tasks are left out.


def test_targeted_keep_untargeted_attacks_the_other_tasks(dict_setup):
  x0, labels, targets = dict_setup
  targets = {"depth_zbuffer": targets["depth_zbuffer"]}
  out = attacks.pgd(dict_loss, x0, labels, direction=D.gbmta(), eps=EPS, bounds=BOUNDS,
                    num_steps=5, targets=targets, keep_untargeted=True)
  before, after = dict_loss(x0, labels), dict_loss(out.x_adv, labels)
  assert set(out.losses) == {"segment_semantic", "normal", "depth_zbuffer"}
  assert np.mean(np.asarray(after["normal"] - before["normal"])) > 0
  target_after = dict_loss(out.x_adv, {**labels, **targets})["depth_zbuffer"]
  assert np.all(np.asarray(target_after) < np.asarray(dict_loss(x0, {**labels, **targets})[
      "depth_zbuffer"]))


def test_target_errors():
  batch = small_batch(0)
  model, tasks = small_model()
  predict, state = models.pure_predict(model)
  loss_fn = tasks_lib.make_loss_fn(functools.partial(predict, state), tasks, "image")
  kw = dict(direction=D.gbmta(), eps=1.0, bounds=BOUNDS)
  with pytest.raises(ValueError, match="target map for 'depth_zbuffer' has shape"):
    attacks.pgd(loss_fn, batch["image"], batch, targets={"depth_zbuffer": np.zeros((2, 3))}, **kw)
  with pytest.raises(ValueError, match="targets has task 'nosuch'"):
    attacks.pgd(loss_fn, batch["image"], batch, targets={"nosuch": np.zeros((2, 3))}, **kw)
  with pytest.raises(ValueError, match="needs labels as a dict"):
    attacks.pgd(testing.loss_fn, batch["image"], (1, 2), targets={"a": np.zeros(2)}, **kw)
  with pytest.raises(ValueError, match="unknown norm 'l1'"):
    attacks.pgd(loss_fn, batch["image"], batch, norm="l1", **kw)
  with pytest.raises(ValueError, match="unknown APGD variant"):
    attacks.apgd(loss_fn, batch["image"], batch, variant="fast", **kw)


# ------------------------------------------------------------------------------------------------
# What the result tells: best_step, step sizes, padding.

def test_best_step_is_the_iterate_returned(setup):
  x0, labels = setup
  out = attacks.pgd(testing.loss_fn, x0, labels, direction=D.total(), eps=EPS, bounds=BOUNDS,
                    num_steps=6, step_size=4.0, return_best=True)
  f = np.asarray(out.objective)
  np.testing.assert_array_equal(out.best_step, np.argmax(f, axis=0))
  last = attacks.pgd(testing.loss_fn, x0, labels, direction=D.total(), eps=EPS, bounds=BOUNDS,
                     num_steps=6)
  np.testing.assert_array_equal(last.best_step, [6, 6, 6])
  ref = attacks.apgd(testing.loss_fn, x0, labels, direction=D.total(), eps=EPS, bounds=BOUNDS,
                     num_steps=10, per_sample=True)
  k = np.asarray(ref.best_step)
  np.testing.assert_allclose(np.asarray(ref.objective)[k, np.arange(3)],
                             np.max(ref.objective, axis=0), rtol=1e-6)
  assert ref.step_size.shape == (10, 3)


def test_padding_takes_no_part_in_the_reference_batch_objective(setup):
  x0, labels = setup
  params, y = labels
  x_pad = jnp.concatenate([x0, jnp.clip(-x0[:1], BOUNDS[0], BOUNDS[1])])  # A padding image.
  labels_pad = (params, jax.tree.map(lambda v: jnp.concatenate([v, v[-1:]]), y))
  kw = dict(direction=D.gbmta(), eps=EPS, bounds=BOUNDS, num_steps=10)
  plain = attacks.apgd(testing.loss_fn, x0, labels, **kw)
  padded = attacks.apgd(testing.loss_fn, x_pad, labels_pad,
                        example_weight=jnp.array([1.0, 1.0, 1.0, 0.0]), **kw)
  np.testing.assert_allclose(padded.objective[:, 0], plain.objective[:, 0], rtol=1e-5)
  np.testing.assert_allclose(padded.x_adv[:3], plain.x_adv, atol=1e-3)


def test_static_options_of_equal_value_but_other_type_compile_separately(setup):
  """unroll=True (unrolled) and unroll=1 (rolled) are equal in Python but distinct programs."""
  # (The older unroll= spelling: loop='unrolled' and loop='rolled'.)
  x0, labels = setup
  traces = []

  def counted(x, labels_):
    traces.append(1)
    return testing.loss_fn(x, labels_)
  attacks.pgd(counted, x0, labels, direction=D.total(), eps=EPS, bounds=BOUNDS, num_steps=2,
              unroll=1)
  rolled = len(traces)
  attacks.pgd(counted, x0, labels, direction=D.total(), eps=EPS, bounds=BOUNDS, num_steps=2,
              unroll=True)
  unrolled = len(traces)
  assert unrolled > rolled  # A program of its own.
  attacks.pgd(counted, x0, labels, direction=D.total(), eps=EPS, bounds=BOUNDS, num_steps=2,
              unroll=True)
  assert len(traces) == unrolled  # And reused.
