"""Jitted pure train steps: clean (spec §9) and adversarial (FAT or the reference's, spec §10).

The train state is a dict of pure pytrees — ``params``, ``batch_stats`` (nested dicts of arrays as
given by ``nnx.to_pure_dict``), ``opt_state`` (optax), ``step`` (int32) and ``key`` (a raw
uint32 PRNG key) — so that Orbax saves it as is and a step is one ``jax.jit`` of arrays to arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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

State = dict[str, Any]
Apply = Callable[..., tuple[dict[str, jax.Array], Any]]
ADV_MODES = ("none", "reference", "fat")


def init_state(params: Any, batch_stats: Any, optimizer: optax.GradientTransformation,
               seed: int) -> State:
  """Fresh train state from pure ``params`` / ``batch_stats`` dicts."""
  return {"params": params, "batch_stats": batch_stats, "opt_state": optimizer.init(params),
          "step": jnp.zeros((), jnp.int32), "key": jax.random.PRNGKey(seed)}


def uses_clean_step(adv: ml_collections.ConfigDict) -> bool:
  """Whether an iteration makes an extra clean update (default: yes for the reference, Q29)."""
  base.check_choice("adv.mode", adv.mode, ADV_MODES)
  if adv.mode == "none":
    return False
  return adv.mode == "reference" if adv.clean_step is None else bool(adv.clean_step)


def updates_per_step(adv: ml_collections.ConfigDict) -> int:
  """Optimiser updates per iteration: 2 with an extra clean step, else 1."""
  return 2 if uses_clean_step(adv) else 1


def adversarial_inputs(apply: Apply, tasks: Sequence[base.Task], params: Any, batch_stats: Any,
                       batch: base.Batch, adv: ml_collections.ConfigDict) -> jax.Array:
  """The attack inside a train step, against the eval-mode (running BatchNorm) model."""
  direction = directions_lib.by_name(adv.direction)
  predict = lambda x: apply(params, batch_stats, x, train=False)[0]
  loss_fn = loss_fn_lib.make_loss_fn(predict, tasks, direction.reduction)
  options = {} if adv.step_size is None else {"step_size": adv.step_size}
  if adv.mode == "reference":
    spec = attacks.Attack("pgd", direction, adv.num_steps, options)
  else:
    spec = attacks.Attack("early_stopped_pgd", direction, adv.num_steps,
                          {**options, "tau": adv.tau, "margin": adv.margin})
  x_adv = spec(loss_fn, batch["image"], batch, eps=adv.eps, bounds=preprocess.input_bounds()).x_adv
  return jax.lax.stop_gradient(x_adv)


def make_train_step(apply: Apply, tasks: Sequence[base.Task],
                    optimizer: optax.GradientTransformation,
                    config: ml_collections.ConfigDict) -> Callable[[State, base.Batch],
                                                                   tuple[State, dict[str, Any]]]:
  """``step(state, batch) -> (state, metrics)``, one jitted function (attack + updates).

  Training losses are the reference's batch-pooled ``'mean'`` losses weighted by
  ``config.task_weights`` (default 1). ``config.adv.mode``: ``'none'`` (clean training),
  ``'reference'`` (I-FGSM examples, optional extra clean update first) or ``'fat'`` (early-stopped
  PGD examples only).
  """
  tasks = tuple(tasks)
  weights = dict(config.task_weights)
  adv = config.adv
  clean_step = uses_clean_step(adv)

  def update(state: State, x: jax.Array, batch: base.Batch, rng: jax.Array):
    def objective(params):
      preds, new_stats = apply(params, state["batch_stats"], x, train=True, rng=rng)
      losses = {t.name: t.loss(preds[t.name], batch, "pooled") for t in tasks}
      return loss_fn_lib.total_loss(losses, weights), (losses, nnx.to_pure_dict(new_stats))

    (loss, (losses, new_stats)), grads = jax.value_and_grad(objective, has_aux=True)(
        state["params"])
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    state = state | {"params": optax.apply_updates(state["params"], updates),
                     "batch_stats": new_stats, "opt_state": opt_state}
    return state, loss, {f"loss/{n}": jnp.mean(v) for n, v in losses.items()}

  def train_step(state: State, batch: base.Batch) -> tuple[State, dict[str, Any]]:
    key, clean_rng, adv_rng = jax.random.split(state["key"], 3)
    metrics = {}
    if adv.mode == "none":
      state, loss, losses = update(state, batch["image"], batch, clean_rng)
    else:
      if clean_step:
        state, metrics["clean_loss"], _ = update(state, batch["image"], batch, clean_rng)
      x_adv = adversarial_inputs(apply, tasks, state["params"], state["batch_stats"], batch, adv)
      state, loss, losses = update(state, x_adv, batch, adv_rng)
    metrics |= {"loss": loss, **losses}
    return state | {"key": key, "step": state["step"] + 1}, metrics

  return jax.jit(train_step)
