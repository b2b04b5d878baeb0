"""The reference optimiser: Adam with coupled L2 weight decay and a per-iteration step schedule."""

from __future__ import annotations

import ml_collections
import optax


def learning_rate(config: ml_collections.ConfigDict, updates_per_step: int = 1) -> optax.Schedule:
  """StepLR stepped once per training iteration: ``lr0 * gamma ** floor(i / decay_every)``.

  ``updates_per_step`` is the number of optimiser updates one iteration makes (2 for the reference
  adversarial training with its extra clean step); the schedule still counts iterations.
  """
  if config.lr <= 0 or config.lr_decay_every < 1 or not 0 < config.lr_decay_rate <= 1:
    raise ValueError(f"Need lr > 0, lr_decay_every >= 1 and 0 < lr_decay_rate <= 1; got "
                     f"{config.lr}, {config.lr_decay_every}, {config.lr_decay_rate}.")
  decay = optax.exponential_decay(config.lr, config.lr_decay_every, config.lr_decay_rate,
                                  staircase=True)
  return lambda count: decay(count // updates_per_step)


def make_optimizer(config: ml_collections.ConfigDict,
                   updates_per_step: int = 1) -> optax.GradientTransformation:
  """PyTorch ``Adam(betas, eps, weight_decay)``: ``g + wd * p`` enters the moments (spec §13)."""
  return optax.chain(
      optax.add_decayed_weights(config.weight_decay),
      optax.scale_by_adam(b1=config.b1, b2=config.b2, eps=config.adam_eps),
      optax.scale_by_learning_rate(learning_rate(config, updates_per_step)))
