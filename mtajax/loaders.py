"""The evaluation batches of a run: one loader per split and process, shared by every evaluation."""

from __future__ import annotations

import functools
import itertools
import os
from typing import Any, Iterator

import ml_collections
import numpy as np

from mtajax.data import pipeline


@functools.lru_cache(maxsize=8)
def _eval_loader(dataset: str, data_dir: str, split: str, batch_size: int, tasks: tuple[str, ...],
                 data_config: tuple[tuple[str, Any], ...] | None) -> pipeline.Loader:
  return pipeline.dataset(dataset, data_dir, split, batch_size=batch_size, tasks=tasks,
                          config=None if data_config is None else dict(data_config))


def eval_batches(config: ml_collections.ConfigDict,
                 t: ml_collections.ConfigDict) -> Iterator[dict[str, np.ndarray]]:
  """The first ``config.eval_max_batches`` batches of ``config.eval_split`` for the model of
  training config ``t``; one loader per split and process, so a small split's decoded records
  (``pipeline.Loader.record``) serve every record of the grid and the robust suite."""
  data_config = None if t.data_config is None else tuple(sorted(dict(t.data_config).items()))
  loader = _eval_loader(t.dataset, os.path.expanduser(t.data_dir), config.eval_split,
                        config.eval_batch_size, tuple(t.tasks), data_config)
  return itertools.islice(iter(loader), config.eval_max_batches)
