"""Training recipes: each objective against a NumPy transcription on a toy net, the inner
maximisation, random_task, the curriculum, bad configs and a TRADES run resumed bit-identically."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mtajax  # noqa: F401  (XLA:CPU workaround before JAX initialises)
from mtajax import directions
from mtajax.tasks import attack_losses
from mtajax.tasks import loss_fn as loss_fn_lib
from mtajax.train import config as config_lib
from mtajax.train import checkpoint
from mtajax.train import recipes
from mtajax.train import step as step_lib
from mtajax.train.recipes import curriculum

from fixtures import (RECIPE_TASKS as TASKS, recipe_apply as apply, recipe_consistency_np,
                      recipe_losses_np, recipe_problem)

TOL = dict(rtol=2e-5, atol=1e-6)
NAMES = [t.name for t in TASKS]


def _config(mode, **adv):
  c = config_lib.default_config()
  c.adv.mode, c.adv.num_steps = mode, 2
  for k, v in adv.items():
    setattr(c.adv, k, v)
  return c


def _first_step(config, seed=0):
  """One train step from a fresh state: (state, metrics, params, stats, batch, attack key)."""
  params, stats, batch = recipe_problem()
  optimizer = optax.sgd(0.1)
  state = step_lib.init_state(params, stats, optimizer, seed)
  new, metrics = step_lib.make_train_step(apply, TASKS, optimizer, config)(state, batch)
  adv_rng = jax.random.split(state["key"], 3)[2]
  return new, jax.device_get(metrics), params, stats, batch, recipes.attack_key(adv_rng)


def _check_finite(metrics):
  assert all(np.isfinite(v) for v in metrics.values()), metrics


@pytest.mark.parametrize("attack,direction,attack_loss", [
    ("pgd", "total", "default"), ("fgsm", "random_task", "segpgd")])
def test_adversarial_loss_is_the_task_loss_at_its_attack(attack, direction, attack_loss):
  config = _config("adversarial", attack=attack, direction=direction, attack_loss=attack_loss)
  config.task_weights.normal = 2.0
  _, metrics, params, stats, batch, key = _first_step(config)
  x_adv = step_lib.adversarial_inputs(apply, TASKS, params, stats, batch, config.adv, key)
  assert 0 < np.abs(x_adv - batch["image"]).max() <= 8.0 + 1e-4  # 8 = adv.eps
  want = recipe_losses_np(apply(params, stats, x_adv, train=True)[0], batch)
  _check_finite(metrics)
  np.testing.assert_allclose(metrics["loss"], sum(want.values()) + want["normal"], **TOL)
  for name in NAMES:
    np.testing.assert_allclose(metrics[f"loss/{name}"], want[name], **TOL)


def test_trades_loss_matches_numpy():
  config = _config("trades", beta=3.0, direction="total")
  config.adv.consistency_weights.depth_zbuffer = 2.0
  _, metrics, params, stats, batch, key = _first_step(config)
  x_adv = step_lib.adversarial_inputs(apply, TASKS, params, stats, batch, config.adv, key)
  preds, new_stats = apply(params, stats, batch["image"], train=True)
  preds_adv, _ = apply(params, new_stats, x_adv, train=True)
  losses, cons = recipe_losses_np(preds, batch), recipe_consistency_np(preds, preds_adv, batch)
  assert min(cons.values()) > 0
  _check_finite(metrics)
  want = sum(losses.values()) + 3.0 * (sum(cons.values()) + cons["depth_zbuffer"])
  np.testing.assert_allclose(metrics["loss"], want, **TOL)
  for name in NAMES:
    np.testing.assert_allclose(metrics[f"consistency/{name}"], cons[name], **TOL)


def test_mixed_keeps_the_clean_fraction_clean():
  config = _config("mixed", clean_fraction=0.25, direction="single_depth_zbuffer")
  _, metrics, params, stats, batch, key = _first_step(config)
  attacked = {k: v[1:] for k, v in batch.items()}
  x_adv = step_lib.adversarial_inputs(apply, TASKS, params, stats, attacked, config.adv, key)
  x = jnp.concatenate([batch["image"][:1], x_adv])
  want = recipe_losses_np(apply(params, stats, x, train=True)[0], batch)
  _check_finite(metrics)
  np.testing.assert_allclose(metrics["loss"], sum(want.values()), **TOL)
  assert np.abs(x_adv - attacked["image"]).max() > 0


@pytest.mark.parametrize("mode", ["adversarial", "trades"])
def test_inner_maximisation_raises_its_objective(mode):
  config = _config(mode, direction="gbmta", num_steps=5)
  params, stats, batch = recipe_problem()
  x_adv = step_lib.adversarial_inputs(apply, TASKS, params, stats, batch, config.adv,
                                      jax.random.PRNGKey(3))
  predict = lambda x: apply(params, stats, x, train=False)[0]
  loss = "kl" if mode == "trades" else "default"
  loss_fn = loss_fn_lib.make_loss_fn(predict, TASKS, "image", loss)
  context = lambda: type("Ctx", (), {"clean": predict(batch["image"]), "step": 0, "num_steps": 1})
  clean = loss_fn(batch["image"], batch, context())
  attacked = loss_fn(x_adv, batch, context())
  for name in NAMES:  # every task's objective rises (the consistency from exactly 0)
    assert np.mean(attacked[name]) > np.mean(clean[name]) + 1e-6, name


def test_random_task_attacks_one_task_per_example():
  params, stats, batch = recipe_problem(b=6)
  predict = lambda x: apply(params, stats, x, train=False)[0]
  loss_fn = loss_fn_lib.make_loss_fn(predict, TASKS, "image")
  choice = np.array([0, 1, 2, 2, 1, 0])
  got, losses = directions.by_name("random_task").at(choice)(loss_fn, batch["image"], batch)
  for t, name in enumerate(NAMES):
    want, _ = directions.single(name)(loss_fn_lib.make_loss_fn(predict, TASKS, "image"),
                                      batch["image"], batch)
    np.testing.assert_allclose(got[choice == t], want[choice == t], rtol=1e-5, atol=1e-9)
    assert np.abs(got[choice == t]).max() > 0
  objective = directions.by_name("random_task").at(choice).objective(losses)
  np.testing.assert_allclose(objective, np.stack([losses[n] for n in NAMES])[choice, range(6)])
  with pytest.raises(ValueError, match="needs its per-example task indices; pass the attack"):
    directions.by_name("random_task").objective(losses)


def test_curriculum_schedule_matches_numpy():
  adv = _config("adversarial", eps=8.0, num_steps=10, curriculum_steps=100, curriculum_start=0.2,
                curriculum_levels=3).adv
  steps = np.array([0, 1, 33, 50, 99, 100, 250])
  r = 0.2 + 0.8 * np.minimum(steps / 100, 1)
  np.testing.assert_allclose(8.0 * curriculum.fraction(adv, jnp.asarray(steps)), 8.0 * r,
                             rtol=1e-6)
  assert curriculum.step_counts(adv) == (2, 6, 10)  # round(10 · (0.2, 0.6, 1.0))
  np.testing.assert_array_equal(curriculum.level(adv, jnp.asarray(steps)),
                                np.floor(np.minimum(steps / 100, 1) * 2))


def test_curriculum_compiles_one_program_and_ramps_eps():
  traces = []

  def counted(*args, **kwargs):
    traces.append(1)  # runs while tracing only
    return apply(*args, **kwargs)
  config = _config("adversarial", direction="total", num_steps=3, curriculum_steps=4,
                   curriculum_levels=3)
  params, stats, batch = recipe_problem()
  optimizer = optax.sgd(0.0)  # the weights stay: each step's loss shows its ε
  state = step_lib.init_state(params, stats, optimizer, 0)
  train_step = step_lib.make_train_step(counted, TASKS, optimizer, config)
  losses = []
  for i in range(6):
    state, metrics = train_step(state, batch)
    losses.append(float(metrics["loss"]))
    if i == 0:
      traced = len(traces)
  assert len(traces) == traced  # steps 1-5 (other ε, other step counts) reuse the program
  clean = recipe_losses_np(apply(params, stats, batch["image"], train=True)[0], batch)
  np.testing.assert_allclose(losses[0], sum(clean.values()), **TOL)  # ε = 0 at step 0
  assert losses[0] < losses[2] < losses[4]


@pytest.mark.parametrize("change,match", [
    (dict(mode="madry"), r"adv.mode='madry' is not a training recipe; use one of .*register"),
    (dict(mode="adversarial", direction="single_edges"),
     r"attacks no trained task; use single_<task> with a task of"),
    (dict(mode="adversarial", direction="nope"), r"unknown direction 'nope'"),
    (dict(mode="fat", eps=-1.0), r"adv.eps must be a number >= 0"),
    (dict(mode="trades", beta=-0.5), r"adv.beta must be a number >= 0"),
    (dict(mode="trades", attack="fgsm"), r"cannot use adv.attack='fgsm'.*use one of"),
    (dict(mode="trades", attack_loss="segpgd"), r"leave adv.attack_loss='default'"),
    (dict(mode="mixed", clean_fraction=1.5), r"adv.clean_fraction must be in \[0, 1\]"),
    (dict(mode="mixed", clean_step=True), r"makes no extra clean update; unset adv.clean_step"),
    (dict(mode="adversarial", curriculum_start=2.0), r"curriculum_start must be a fraction"),
    (dict(mode="adversarial", attack="cw"), r"unknown attack 'cw'"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_configs_get_one_line_naming_the_fix(change, match):
  adv = _config(**change).adv
  with pytest.raises(ValueError, match=match) as e:
    recipes.validate(adv, NAMES)
  assert "\n" not in str(e.value)


def test_registry_is_open_and_keeps_reference_and_fat():
  assert {"none", "reference", "fat", "adversarial", "trades", "mixed"} <= set(recipes.registered())
  assert recipes.uses_clean_step(_config("reference").adv)
  assert not recipes.uses_clean_step(_config("fat").adv)
  recipes.register_recipe("twice_clean", recipes.by_name("none").step)
  try:
    assert "twice_clean" in step_lib.adv_modes()
    recipes.validate(_config("twice_clean").adv, NAMES)
  finally:
    recipes.base._REGISTRY.pop("twice_clean")
  assert config_lib.identity(_config("none"))["adv"].keys() == {
      "mode", "direction", "eps", "num_steps", "step_size", "clean_step", "tau", "margin"}


def test_kl_attack_loss_is_zero_at_the_clean_prediction():
  params, stats, batch = recipe_problem()
  preds = apply(params, stats, batch["image"], train=False)[0]
  for task in TASKS:
    num, den = attack_losses.consistency(task, preds[task.name], preds[task.name], batch)
    np.testing.assert_allclose(num, 0.0, atol=1e-6)
    assert float(den.sum()) > 0


def test_trades_resumes_bit_identically_from_its_checkpoint(tmp_path):
  """Step 2 from the Orbax-restored step-1 state equals the uninterrupted step 2 (the train loop's
  resume of any recipe's state; the loop itself: tests/test_train_loop.py)."""
  config = _config("trades", direction="total", num_steps=1)
  params, stats, batch = recipe_problem()
  optimizer = optax.adam(1e-2)
  train_step = step_lib.make_train_step(apply, TASKS, optimizer, config)
  one, _ = train_step(step_lib.init_state(params, stats, optimizer, 0), batch)
  two, _ = train_step(one, batch)
  saver = checkpoint.Checkpointer(tmp_path / "ckpt")
  saver.save(1, one, {})
  saver.wait()
  saver.close()
  restored = checkpoint.restore_state(tmp_path / "ckpt", 1, one)
  resumed, _ = train_step(restored, batch)
  assert int(resumed["step"]) == 2
  assert not np.array_equal(np.asarray(jax.tree.leaves(two["params"])[0]),
                            np.asarray(jax.tree.leaves(one["params"])[0]))  # it trained
  for a, b in zip(jax.tree.leaves(two), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
