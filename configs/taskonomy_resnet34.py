"""Tiny-Taskonomy / Deeplab-ResNet34: the paper's 15 five-task models."""

from configs import common

LAYOUTS = (0, 4, 190, 191, 200, 348, 352, 358, 469, 481, 958, 959, 1020, 1037, 1043)  # spec §8.9


def get_config(arg: str | None = None):
  args = common.parse_arg(arg)
  c = common.base("runs/taskonomy_resnet34")
  t = c.train
  t.dataset, t.data_dir = "taskonomy", "~/tensorflow_datasets"
  t.tasks = ("segment_semantic", "normal", "depth_zbuffer", "keypoints2d", "edge_texture")
  t.train_split, t.eval_split = "train", "test_small"
  t.backbone = "resnet34"
  t.batch_size, t.num_steps, t.lr, t.lr_decay_every = 8, 50_000, 5e-4, 5000  # spec §9
  t.eval_every = t.checkpoint_every = 500
  c.eval_split = "test_small"
  c.layouts = LAYOUTS
  if args.get("smoke"):
    common.smoke(c, num_tasks=5)
  return c
