"""Jitted pure train steps of the training recipes: clean (spec §9), adversarial (spec §10 and the
defences of :mod:`mtajax.train.recipes`).

The train state is a dict of pure pytrees — ``params``, ``batch_stats`` (nested dicts of arrays as
given by ``nnx.to_pure_dict``), ``opt_state`` (optax), ``step`` (int32) and ``key`` (a raw
uint32 PRNG key) — so that Orbax saves it as is and a step is one ``jax.jit`` of arrays to arrays.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from mtajax import dispatch
from mtajax.tasks import base
from mtajax.train import recipes

State = dict[str, Any]
Apply = Callable[..., tuple[dict[str, jax.Array], Any]]


def adv_modes() -> tuple[str, ...]:
  """The ``adv.mode`` values: the registered training recipes (:mod:`mtajax.train.recipes`)."""
  return recipes.registered()


def init_state(params: Any, batch_stats: Any, optimizer: optax.GradientTransformation,
               seed: int) -> State:
  """Fresh train state from pure ``params`` / ``batch_stats`` dicts."""
  return {"params": params, "batch_stats": batch_stats, "opt_state": optimizer.init(params),
          "step": jnp.zeros((), jnp.int32), "key": jax.random.PRNGKey(seed)}


def uses_clean_step(adv: ml_collections.ConfigDict) -> bool:
  """Whether an iteration makes an extra clean update (default: yes for the reference, Q29)."""
  return recipes.uses_clean_step(adv)


def updates_per_step(adv: ml_collections.ConfigDict) -> int:
  """Optimiser updates per iteration: 2 with an extra clean step, else 1."""
  return 2 if uses_clean_step(adv) else 1


def adversarial_inputs(apply: Apply, tasks: Sequence[base.Task], params: Any, batch_stats: Any,
                       batch: base.Batch, adv: ml_collections.ConfigDict,
                       key: jax.Array | None = None, step: Any = 0) -> jax.Array:
  """The attack of recipe ``adv.mode`` inside a train step at train step ``step``, against the
  eval-mode (running BatchNorm) model; ``key`` feeds random starts and ``random_task``."""
  spec = recipes.by_name(adv.mode).spec
  if spec is None:
    raise ValueError(f"recipe {adv.mode!r} makes no adversarial inputs; set adv.mode to one of "
                     f"{[n for n in adv_modes() if recipes.by_name(n).spec is not None]}.")
  ctx = recipes.Context(apply, tuple(tasks), optax.identity(), {}, adv)
  state = {"params": params, "batch_stats": batch_stats, "step": jnp.asarray(step, jnp.int32)}
  return ctx.attack(state, batch, functools.partial(spec, adv), key)


def make_train_step(apply: Apply, tasks: Sequence[base.Task],
                    optimizer: optax.GradientTransformation,
                    config: ml_collections.ConfigDict) -> Callable[[State, base.Batch],
                                                                   tuple[State, dict[str, Any]]]:
  """``step(state, batch) -> (state, metrics)``, one jitted function (attack + updates).

  Training losses are the reference's batch-pooled ``'mean'`` losses weighted by
  ``config.task_weights`` (default 1). ``config.adv.mode`` names the recipe
  (:mod:`mtajax.train.recipes`): ``'none'`` (clean training), ``'reference'`` (I-FGSM examples,
  optional extra clean update first), ``'fat'`` (early-stopped PGD examples only),
  ``'adversarial'``, ``'trades'``, ``'mixed'`` or a registered one; ``config.adv`` is checked
  against the tasks first.
  """
  tasks = tuple(tasks)
  recipes.validate(config.adv, [t.name for t in tasks])
  recipe = recipes.by_name(config.adv.mode)
  ctx = recipes.Context(apply, tasks, optimizer, dict(config.task_weights), config.adv)

  def train_step(state: State, batch: base.Batch) -> tuple[State, dict[str, Any]]:
    key, clean_rng, adv_rng = jax.random.split(state["key"], 3)
    state, metrics = recipe.step(ctx, state, batch, clean_rng, adv_rng)
    return state | {"key": key, "step": state["step"] + 1}, metrics

  return dispatch.jit(train_step)
