"""Task sets: names, channels and metric directions of the reference's NYUv2 and Taskonomy tasks."""

import numpy as np
import pytest

from mtajax import tasks as mt


def test_task_sets_follow_the_reference():
  lower = {"Angle Mean", "Angle Median", "abs_err", "rel_err", "err", "key_err", "edge_err"}
  for tasks, names, channels in [
      (mt.nyuv2_tasks(), ["segment_semantic", "normal", "depth_zbuffer"], [40, 3, 1]),
      (mt.taskonomy_tasks(np.ones(17)), ["segment_semantic", "normal", "depth_zbuffer",
                                         "keypoints2d", "edge_texture"], [17, 3, 1, 1, 1]),
      (mt.synthetic_tasks(num_classes=7), ["segment_semantic", "normal", "depth_zbuffer",
                                           "keypoints2d", "edge_texture"], [7, 3, 1, 1, 1]),
      (mt.synthetic_tasks(3, num_classes=7), ["segment_semantic", "normal", "depth_zbuffer"],
       [7, 3, 1])]:
    assert [t.name for t in tasks] == names and [t.channels for t in tasks] == channels
    for task in tasks:
      assert all(higher == (m not in lower) for m, higher in task.metrics.items())
  assert [m for t in mt.nyuv2_tasks() for m in t.metrics] == [
      "mIoU", "Pixel Acc", "Angle Mean", "Angle Median", "Angle 11.25", "Angle 22.5", "Angle 30",
      "abs_err", "rel_err", "sigma_1.25", "sigma_1.25^2", "sigma_1.25^3"]
  assert [m for t in mt.taskonomy_tasks() for m in t.metrics] == [
      "err", "cosine_similarity", "abs_err", "key_err", "edge_err"]
  with pytest.raises(ValueError, match="num_tasks"):
    mt.synthetic_tasks(4, num_classes=7)
  with pytest.raises(ValueError, match="definition"):
    mt.nyuv2_tasks(definition="textbook")
