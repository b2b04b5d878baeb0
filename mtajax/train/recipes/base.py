"""The recipe interface: a train step's context, the open registry and the config checks.

A recipe is chosen by ``config.adv.mode``. Its ``step(ctx, state, batch, clean_rng, adv_rng)``
returns the new state (params, batch_stats, opt_state) and the step's metrics; the train step
around it (``mtajax.train.step``) draws the keys and counts the steps.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
import optax

from mtajax import attacks
from mtajax import directions as directions_lib
from mtajax.data import preprocess
from mtajax.tasks import base
from mtajax.tasks import loss_fn as loss_fn_lib
from mtajax.train.recipes import curriculum

State = dict[str, Any]
Metrics = dict[str, jax.Array]
Apply = Callable[..., tuple[dict[str, jax.Array], Any]]


@dataclasses.dataclass(frozen=True)
class Context:
  """What a recipe's step sees: the model, its tasks, the optimiser and the training config."""
  apply: Apply
  tasks: tuple[base.Task, ...]
  optimizer: optax.GradientTransformation
  weights: Mapping[str, float]  # config.task_weights (default 1)
  adv: ml_collections.ConfigDict

  def update(self, state: State, objective: Callable[[Any], tuple[jax.Array, Any]]
             ) -> tuple[State, jax.Array, Any]:
    """One optimiser update of ``objective(params) -> (loss, (aux, new batch_stats))``;
    returns the new state, the loss and ``aux``."""
    (loss, (aux, new_stats)), grads = jax.value_and_grad(objective, has_aux=True)(
        state["params"])
    updates, opt_state = self.optimizer.update(grads, state["opt_state"], state["params"])
    state = state | {"params": optax.apply_updates(state["params"], updates),
                     "batch_stats": new_stats, "opt_state": opt_state}
    return state, loss, aux

  def task_losses(self, preds: Mapping[str, jax.Array], batch: base.Batch
                  ) -> dict[str, jax.Array]:
    """The per-sample ``'pooled'`` task losses of ``preds`` (their means: the training losses)."""
    return {t.name: t.loss(preds[t.name], batch, "pooled") for t in self.tasks}

  def train_update(self, state: State, x: jax.Array, batch: base.Batch, rng: jax.Array
                   ) -> tuple[State, jax.Array, Metrics]:
    """One update on the weighted task losses of the train-mode model at ``x``."""
    def objective(params):
      preds, new_stats = self.apply(params, state["batch_stats"], x, train=True, rng=rng)
      losses = self.task_losses(preds, batch)
      return loss_fn_lib.total_loss(losses, self.weights), (losses, nnx.to_pure_dict(new_stats))
    state, loss, losses = self.update(state, objective)
    return state, loss, {f"loss/{n}": jnp.mean(v) for n, v in losses.items()}

  def attack(self, state: State, batch: base.Batch, spec: Callable[[int], attacks.Attack],
             key: jax.Array | None = None) -> jax.Array:
    """Adversarial ``batch['image']`` against the eval-mode (running BatchNorm) model.

    ``spec(num_steps)`` is the attack; ε and the step count follow the curriculum of
    ``adv`` at ``state['step']``. ``key`` feeds random starts and ``random_task``'s draw.
    """
    predict = lambda x: self.apply(state["params"], state["batch_stats"], x, train=False)[0]
    x = batch["image"]

    def run(eps: Any, num_steps: int) -> jax.Array:
      s = spec(num_steps)
      index = None
      if isinstance(s.direction, directions_lib.RandomTask):
        key_index = jax.random.fold_in(key, 1)
        index = jax.random.randint(key_index, x.shape[:1], 0, len(self.tasks))
      return s(s.loss_fn(predict, self.tasks), x, batch, eps=eps,
               bounds=preprocess.input_bounds(), key=key, index=index).x_adv
    return jax.lax.stop_gradient(curriculum.run(self.adv, state["step"], run))


Step = Callable[[Context, State, base.Batch, jax.Array, jax.Array], tuple[State, Metrics]]
Check = Callable[[ml_collections.ConfigDict, Sequence[str]], None]
Spec = Callable[[ml_collections.ConfigDict, int], attacks.Attack]


def attack_key(adv_rng: jax.Array) -> jax.Array:
  """The key of a step's attack (random starts, random_task's draw), apart from its dropout key."""
  return jax.random.fold_in(adv_rng, 1)


@dataclasses.dataclass(frozen=True)
class Recipe:
  """A registered recipe.

  Attributes:
    step: ``step(ctx, state, batch, clean_rng, adv_rng) -> (state, metrics)``.
    spec: ``spec(adv, num_steps)``, the attack of its inner maximisation (None: it attacks not);
      then ``adv.eps``, ``adv.num_steps``, ``adv.direction`` and the curriculum are checked.
    clean_step: the default of ``adv.clean_step`` (an extra clean update first); None: the
      recipe has no clean step (``adv.clean_step=True`` is an error).
    check: its own checks of ``adv`` against the task names (one-line ValueErrors).
  """
  step: Step
  spec: Spec | None = None
  clean_step: bool | None = None
  check: Check | None = None


_REGISTRY: dict[str, Recipe] = {}


def register_recipe(name: str, step: Step, *, spec: Spec | None = None,
                    clean_step: bool | None = None, check: Check | None = None) -> None:
  """Makes ``config.adv.mode = name`` train with ``step`` (re-registering replaces it)."""
  if not isinstance(name, str) or not name:
    raise ValueError(f"a recipe needs a non-empty name; got {name!r}.")
  if not callable(step):
    raise ValueError(f"the step of recipe {name!r} must be callable; got {step!r}.")
  _REGISTRY[name] = Recipe(step, spec, clean_step, check)


def registered() -> tuple[str, ...]:
  """The registered recipe names (``adv.mode`` values)."""
  return tuple(_REGISTRY)


def by_name(name: str) -> Recipe:
  """The recipe called ``name``."""
  if name not in _REGISTRY:
    raise ValueError(f"adv.mode={name!r} is not a training recipe; use one of "
                     f"{', '.join(_REGISTRY)} or register_recipe() your own.")
  return _REGISTRY[name]


def uses_clean_step(adv: ml_collections.ConfigDict) -> bool:
  """Whether an iteration makes an extra clean update first (the recipe's default, Q29)."""
  recipe = by_name(adv.mode)
  if recipe.clean_step is None or recipe.spec is None:
    return False
  return recipe.clean_step if adv.clean_step is None else bool(adv.clean_step)


def _number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_direction(name: str, task_names: Sequence[str]) -> directions_lib.Direction:
  """The direction ``adv.direction`` names, if it attacks a trained task."""
  direction = directions_lib.by_name(name)
  if isinstance(direction, directions_lib.Single) and direction.task not in task_names:
    raise ValueError(f"adv.direction={name!r} attacks no trained task; use single_<task> with a "
                     f"task of {list(task_names)}, or total / gbmta / random_task.")
  return direction


def validate(adv: ml_collections.ConfigDict, task_names: Sequence[str]) -> None:
  """Rejects an ``adv`` config its recipe cannot train with one line naming the fix."""
  recipe = by_name(adv.mode)
  if recipe.spec is None:
    return
  if not _number(adv.eps) or adv.eps < 0:
    raise ValueError(f"adv.eps must be a number >= 0 (input units, e.g. 8.0); got {adv.eps!r}.")
  if isinstance(adv.num_steps, bool) or not isinstance(adv.num_steps, int) or adv.num_steps < 1:
    raise ValueError(f"adv.num_steps must be an int >= 1; got {adv.num_steps!r}.")
  if adv.clean_step and recipe.clean_step is None:
    raise ValueError(f"recipe {adv.mode!r} makes no extra clean update; unset adv.clean_step "
                     "(or use mode 'adversarial', 'reference' or 'fat').")
  check_direction(adv.direction, task_names)
  curriculum.validate(adv)
  if recipe.check is not None:
    recipe.check(adv, task_names)
