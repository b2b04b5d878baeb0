"""``'trades'``: a TRADES-style multi-task objective (Zhang et al. 2019, yaodongyu/TRADES).

``Σ_t λ_t L_t(f(x)) + β · Σ_t w_t C_t(f_t(x), f_t(x_adv))`` with the clean task losses L_t
(``config.task_weights`` λ_t), β = ``adv.beta`` (6 as TRADES), w_t = ``adv.consistency_weights``
(default 1) and the consistency C_t of :func:`mtajax.tasks.attack_losses.consistency`, batch-pooled
like the task losses: KL(softmax f(x) ‖ softmax f(x_adv)) per valid pixel for segmentation, 1 − cos
for normals, |f(x) − f(x_adv)| for depth, keypoints and edges. As in TRADES the inner maximisation
ascends the consistency (attack loss ``'kl'``, along ``adv.direction``) from a random start in the
ε-ball, against the eval-mode model; the outer loss runs the train-mode model on x, then on x_adv
(BatchNorm statistics updated by both), and its gradient flows through both predictions.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence

import jax
import ml_collections
from flax import nnx

from mtajax import attacks
from mtajax import directions as directions_lib
from mtajax.tasks import attack_losses
from mtajax.tasks import base as tasks_base
from mtajax.tasks import loss_fn as loss_fn_lib
from mtajax.train.recipes import base

RANDOM_START_ATTACKS = ("pgd", "apgd")


def spec(adv: ml_collections.ConfigDict, num_steps: int) -> attacks.Attack:
  """The inner maximisation: ``adv.attack`` on the consistency, from a random start."""
  options = {**dict(adv.attack_options), "random_start": True}
  if adv.step_size is not None:
    options["step_size"] = adv.step_size
  return attacks.Attack(adv.attack, directions_lib.by_name(adv.direction), num_steps, options,
                        "kl")


def consistencies(tasks: Sequence[tasks_base.Task], preds: Mapping[str, jax.Array],
                  preds_adv: Mapping[str, jax.Array], batch: tasks_base.Batch
                  ) -> dict[str, jax.Array]:
  """Per-sample ``'pooled'`` consistencies C_t of the adversarial to the clean predictions."""
  return {t.name: tasks_base.reduce_loss(
      *attack_losses.consistency(t, preds_adv[t.name], preds[t.name], batch), "pooled", batch)
          for t in tasks}


def objective(losses: Mapping[str, jax.Array], consistency: Mapping[str, jax.Array],
              adv: ml_collections.ConfigDict, weights: Mapping[str, float]) -> jax.Array:
  """``total_loss(losses, weights) + β · total_loss(consistency, adv.consistency_weights)``."""
  return (loss_fn_lib.total_loss(losses, weights) +
          adv.beta * loss_fn_lib.total_loss(consistency, dict(adv.consistency_weights)))


def step(ctx: base.Context, state: base.State, batch, clean_rng, adv_rng):
  """The attack on the consistency, then one update on the TRADES objective."""
  del clean_rng
  x = batch["image"]
  x_adv = ctx.attack(state, batch, functools.partial(spec, ctx.adv), base.attack_key(adv_rng))

  def fn(params):
    preds, stats = ctx.apply(params, state["batch_stats"], x, train=True, rng=adv_rng)
    preds_adv, stats = ctx.apply(params, nnx.to_pure_dict(stats), x_adv, train=True, rng=adv_rng)
    losses = ctx.task_losses(preds, batch)
    consistency = consistencies(ctx.tasks, preds, preds_adv, batch)
    return objective(losses, consistency, ctx.adv, ctx.weights), (
        (losses, consistency), nnx.to_pure_dict(stats))

  state, loss, (losses, consistency) = ctx.update(state, fn)
  metrics = {"loss": loss, **{f"loss/{n}": v.mean() for n, v in losses.items()},
             **{f"consistency/{n}": v.mean() for n, v in consistency.items()}}
  return state, metrics


def check(adv: ml_collections.ConfigDict, task_names: Sequence[str]) -> None:
  """β ≥ 0, known consistency weights ≥ 0, an attack with a random start, no attack loss."""
  if isinstance(adv.beta, bool) or not isinstance(adv.beta, (int, float)) or not (
      math.isfinite(adv.beta) and adv.beta >= 0):
    raise ValueError(f"adv.beta must be a number >= 0 (TRADES uses 6.0); got {adv.beta!r}.")
  for name, w in dict(adv.consistency_weights).items():
    if name not in task_names or isinstance(w, bool) or not isinstance(w, (int, float)) or not (
        math.isfinite(w) and w >= 0):
      raise ValueError(f"adv.consistency_weights[{name!r}]={w!r}: use a trained task of "
                       f"{list(task_names)} and a number >= 0.")
  if adv.attack not in RANDOM_START_ATTACKS:
    raise ValueError(f"recipe 'trades' cannot use adv.attack={adv.attack!r}: its consistency has "
                     f"no gradient at the clean input, so it needs a random start; use one of "
                     f"{RANDOM_START_ATTACKS}.")
  if adv.attack_loss != attack_losses.DEFAULT:
    raise ValueError(f"recipe 'trades' ascends its consistency (attack loss 'kl'), not "
                     f"adv.attack_loss={adv.attack_loss!r}; leave adv.attack_loss='default'.")
  spec(adv, adv.num_steps)


base.register_recipe("trades", step, spec=spec, check=check)
