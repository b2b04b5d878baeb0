"""NYUv2 / MobileNetV2: the 20 layouts of the authors' launch script, every attack and direction."""

from configs import common

LAYOUTS = (0, 1, 4, 6, 7, 8, 9, 10, 11, 15, 16, 17, 23, 27, 31, 38, 39, 40, 48, 49)  # spec §8.9


def get_config(arg: str | None = None):
  args = common.parse_arg(arg)
  c = common.base("runs/nyuv2_mobilenetv2")
  t = c.train
  t.dataset, t.data_dir = "nyuv2", "~/tensorflow_datasets"
  t.tasks = ("segment_semantic", "normal", "depth_zbuffer")
  t.backbone = "mobilenetv2"
  t.batch_size, t.num_steps, t.lr, t.lr_decay_every = 16, 20_000, 1e-3, 4000
  c.layouts = LAYOUTS
  if args.get("smoke"):
    common.smoke(c)
  return c
