"""NYUv2 / Deeplab-ResNet34: the paper's 25 models, every attack and direction, ε grid 1…16.

Needs NYUv2 prepared once:  --config.train.data_dir=... plus the manual files (docs/data.md).
Smoke variant for CI: a tiny ResNet34-shaped run on the embedded benchmark (`:smoke`).
"""

from configs import common

LAYOUTS = (0, 2, 4, 5, 9, 10, 11, 14, 17, 21, 23, 26, 28, 33, 34, 35, 36, 38, 39, 41, 42, 43, 44,
           48, 49)  # spec §8.9


def get_config(arg: str | None = None):
  args = common.parse_arg(arg)
  c = common.base("runs/nyuv2_resnet34")
  t = c.train
  t.dataset, t.data_dir = "nyuv2", "~/tensorflow_datasets"
  t.tasks = ("segment_semantic", "normal", "depth_zbuffer")
  t.backbone = "resnet34"
  t.batch_size, t.num_steps, t.lr, t.lr_decay_every = 16, 20_000, 1e-3, 4000  # spec §9
  c.layouts = LAYOUTS
  if args.get("smoke"):
    common.smoke(c)
  return c
