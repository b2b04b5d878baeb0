"""The task sets of the benchmarks, in the reference's task order."""

from __future__ import annotations

from typing import Sequence

from mtajax.tasks import base
from mtajax.tasks.depth import Depth
from mtajax.tasks.l1 import MaskedL1
from mtajax.tasks.normal import LabelEncoding
from mtajax.tasks.normal import Normal
from mtajax.tasks.segmentation import Segmentation

NYUV2_CLASSES = 40
TASKONOMY_CLASSES = 17


def nyuv2_tasks(*, definition: base.Definition = "reference",
                normal_encoding: LabelEncoding = "uint8") -> tuple[base.Task, ...]:
  """NYUv2: segmentation (40), normal (3, raw uint8 labels), depth (1); NYUv2 metrics."""
  return (Segmentation(channels=NYUV2_CLASSES, definition=definition),
          Normal(label_encoding=normal_encoding, definition=definition),
          Depth(definition=definition))


def taskonomy_tasks(class_weights: Sequence[float] | None = None, *,
                    definition: base.Definition = "reference") -> tuple[base.Task, ...]:
  """Tiny-Taskonomy: segmentation (17), normal, depth, keypoints2d, edge_texture; one metric each.

  Args:
    class_weights: the 17 segmentation class weights (``semseg_prior_factor.npy``); None = unweighted.
    definition: ``'reference'`` or ``'standard'`` metric definitions.
  """
  weights = None if class_weights is None else tuple(float(w) for w in class_weights)
  return (Segmentation(channels=TASKONOMY_CLASSES, class_weights=weights, metric_set="taskonomy",
                       definition=definition),
          Normal(label_encoding="unit", metric_set="taskonomy", definition=definition),
          Depth(metric_set="taskonomy", definition=definition),
          MaskedL1(name="keypoints2d", metric_name="key_err", definition=definition),
          MaskedL1(name="edge_texture", metric_name="edge_err", definition=definition))


def synthetic_tasks(num_tasks: int = 5, *, num_classes: int,
                    definition: base.Definition = "reference") -> tuple[base.Task, ...]:
  """The embedded synthetic benchmark: the five Taskonomy names (or the first three).

  Segmentation, normals ([-1, 1] vectors with masks) and depth (metres) are scored with the NYUv2
  metrics; keypoints2d and edge_texture with Taskonomy's ``key_err`` / ``edge_err``.
  """
  base.check_choice("num_tasks", num_tasks, (3, 5))
  tasks = (Segmentation(channels=num_classes, definition=definition),
           Normal(label_encoding="unit", definition=definition),
           Depth(definition=definition),
           MaskedL1(name="keypoints2d", metric_name="key_err", definition=definition),
           MaskedL1(name="edge_texture", metric_name="edge_err", definition=definition))
  return tasks[:num_tasks]
