"""``load_model``: a trained checkpoint as pure functions for the attack library."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Callable

import jax
import ml_collections
from flax import nnx

from mtajax import models
from mtajax.tasks import base
from mtajax.tasks import loss_fn as loss_fn_lib
from mtajax.train import assemble
from mtajax.train import checkpoint
from mtajax.train import optim
from mtajax.train import step as step_lib


@dataclasses.dataclass
class LoadedModel:
  """A restored model: eval-mode ``predict(x)`` and the attack interface ``loss_fn(reduction)``.

  Attributes:
    config: the training config.
    tasks: the tasks it was trained on, in order.
    layout: its (coarse or fine) layout.
    model: the NNX model (weights restored).
    params, batch_stats: the restored pure state.
    step: the checkpoint's training step.
  """
  config: ml_collections.ConfigDict
  tasks: tuple[base.Task, ...]
  layout: models.Layout
  model: Any
  params: Any
  batch_stats: Any
  step: int
  _apply: Callable[..., Any]
  _pure: Callable[..., Any] | None = dataclasses.field(default=None, repr=False, compare=False)

  def predict(self, x: jax.Array) -> dict[str, jax.Array]:
    """Eval-mode predictions ``{task: (B, h, w, C)}`` (BatchNorm running statistics)."""
    return self._apply(self.params, self.batch_stats, x, train=False)[0]

  def pure_predict(self) -> tuple[Callable[[Any, jax.Array], dict[str, jax.Array]], Any]:
    """``(predict, state)``: ``predict(state, x)`` is pure, so weights stay traced under ``jit``.

    ``predict`` is the same function object on every call (jitted callers compile once).
    """
    if self._pure is None:
      self._pure = models.Predict(self._apply)
    return self._pure, (self.params, self.batch_stats)

  def loss_fn(self, reduction: base.Reduction = "image",
              attack_loss: str = "default") -> loss_fn_lib.LossFn:
    """``loss_fn(x, batch) -> {task: (B,)}``; use ``direction.reduction`` to match the reference.

    The weights are traced leaves of the returned loss function (not compile-time constants), so
    calling it afresh per batch reuses the compiled attack.
    """
    predict, state = self.pure_predict()
    return loss_fn_lib.make_loss_fn(functools.partial(predict, state), self.tasks, reduction,
                                    attack_loss)


def load_model(checkpoint_dir: str | Path, step: int | None = None) -> LoadedModel:
  """Restores the latest (or given) checkpoint of a ``train()`` run; needs only the directory.

  ``checkpoint_dir`` is the run's ``workdir/checkpoints`` (a workdir is accepted too).
  """
  checkpoint_dir = Path(checkpoint_dir)
  if (checkpoint_dir / "checkpoints").is_dir():
    checkpoint_dir = checkpoint_dir / "checkpoints"
  step, meta = checkpoint.restore_meta(checkpoint_dir, step)
  config = ml_collections.ConfigDict(meta["config"])
  tasks = assemble.make_tasks(config, meta.get("class_weights"))
  layout = models.parse_layout(meta["layout"])
  # Shapes only: initialising the weights would compile every initialiser for nothing.
  model = nnx.eval_shape(lambda: assemble.make_model(config, tasks, layout))
  apply, params, batch_stats = models.pure_apply(model)
  optimizer = optim.make_optimizer(config, step_lib.updates_per_step(config.adv))
  target = jax.eval_shape(lambda: step_lib.init_state(
      nnx.to_pure_dict(params), nnx.to_pure_dict(batch_stats), optimizer, config.seed))
  restored = checkpoint.restore_state(checkpoint_dir, step, target, meta.get("checksums"))
  for kind, name in ((nnx.Param, "params"), (nnx.BatchStat, "batch_stats")):
    state = nnx.state(model, kind)
    nnx.replace_by_pure_dict(state, restored[name])
    nnx.update(model, state)
  return LoadedModel(config, tasks, layout, model, restored["params"], restored["batch_stats"],
                     step, apply)
