"""Tasks and model of a training config (shared by the train loop and :func:`load_model`)."""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections
from flax import nnx

from mtajax import models
from mtajax.data import pipeline
from mtajax.tasks import base
from mtajax.tasks import task_sets


def make_tasks(config: ml_collections.ConfigDict,
               class_weights: Sequence[float] | None = None) -> tuple[base.Task, ...]:
  """The config's tasks, in the config's order, with the dataset's losses and metrics."""
  name, definition = config.dataset, config.metric_definition
  if name == "synthetic":
    every = task_sets.synthetic_tasks(5, num_classes=pipeline.num_classes(name),
                                      definition=definition)
  elif name == "nyuv2":
    every = task_sets.nyuv2_tasks(definition=definition)
  elif name == "taskonomy":
    every = task_sets.taskonomy_tasks(class_weights, definition=definition)
  else:
    raise ValueError(f"Unknown dataset {name!r}; use one of {pipeline.DATASETS}.")
  by_name = {t.name: t for t in every}
  unknown = [t for t in config.tasks if t not in by_name]
  if unknown or not config.tasks:
    raise ValueError(f"Tasks {unknown or '()'} are not available for {name}; choose from "
                     f"{tuple(by_name)}.")
  return tuple(by_name[t] for t in config.tasks)


def make_model(config: ml_collections.ConfigDict, tasks: Sequence[base.Task],
               layout: models.Layout | str | int | None = None) -> models.BranchedModel:
  """Builds the config's model (``layout`` overrides ``config.layout``) with ``config.seed``."""
  return models.build_model(config.backbone, {t.name: t.channels for t in tasks},
                            config.layout if layout is None else layout, width=config.width,
                            rngs=nnx.Rngs(config.seed))
