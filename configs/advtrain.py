"""Adversarial training of the NYUv2 AS model (paper Table 3 / spec §10), then PGD attacks on it.

`--config.advtrain.mode=fat` runs the paper's FAT (early-stopped PGD, K = τ = 20) instead of the
reference code's 10-step I-FGSM with an extra clean step (Q29).
"""

from configs import common


def get_config(arg: str | None = None):
  args = common.parse_arg(arg)
  c = common.base("runs/advtrain_nyuv2")
  t = c.train
  t.dataset, t.data_dir = "nyuv2", "~/tensorflow_datasets"
  t.tasks = ("segment_semantic", "normal", "depth_zbuffer")
  t.backbone = "resnet34"
  t.batch_size, t.num_steps, t.lr, t.lr_decay_every = 64, 20_000, 1e-3, 4000  # spec §10
  c.layouts = (0,)
  c.attacks = ("pgd",)
  c.eps = (8.0,)
  if args.get("smoke"):
    common.smoke(c)
    c.advtrain.num_steps = 2
  return c
