"""Shared pieces of the run configs (ml_collections, big_vision style)."""

from __future__ import annotations

import ml_collections

from mtajax.train import config as train_config

EPS_GRID = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 12.0, 14.0, 16.0)  # spec §5.6


def parse_arg(arg: str | None) -> dict[str, bool]:
  """``get_config('smoke')`` → {'smoke': True}; comma-separated flags."""
  return {k: True for k in (arg or "").split(",") if k}


def base(workdir: str) -> ml_collections.ConfigDict:
  """A run config: ``train`` (the training recipe) plus what to attack and how."""
  c = ml_collections.ConfigDict()
  c.workdir = workdir
  c.train = train_config.default_config()
  c.layouts = (0,)  # sweep: coarse layout indices (or layout strings)
  c.attacks = ("fgsm", "pgd", "apgd", "auto_sage")
  # 'single' expands to single_<task> for every task; Auto-SAGE runs only total and gbmta (spec §5.5).
  c.directions = ("single", "total", "sign_total", "gbmta")
  c.eps = EPS_GRID
  # Attack losses (mtajax.tasks.attack_losses): 'default' is the training loss; e.g. 'segpgd'.
  c.attack_losses = ("default",)
  c.num_steps = 10  # spec §14.1: the paper likely used 20 for NYUv2; 10 is the committed default
  # One compiled program per model x attack serving every direction (mtajax.directions.Switched)
  # (Single-x, Total, GB-MTA; SignTotal and others keep their own): each direction keeps its loss
  # reduction; results equal the per-direction programs up to float rounding (rare sign flips).
  c.one_program_per_attack = False
  c.eval_split = "test"
  c.eval_batch_size = 16  # spec §5.6
  c.eval_max_batches = ml_collections.config_dict.placeholder(int)  # None = whole split
  c.report_eps = 8.0
  c.report_history = False  # True: the report also shows records of earlier configs in the workdir
  c.examples_eps = (4.0, 8.0, 16.0)  # Fig. 6 perturbations
  # `import` mode: a TreeMTL / DGBA PyTorch checkpoint (.model / .pth, or an .npz state_dict).
  c.checkpoint = ml_collections.config_dict.placeholder(str)
  # Robust evaluation (mtajax.robust): the `robust` mode, and the sweep when `enabled`.
  c.robust = ml_collections.ConfigDict()
  c.robust.enabled = True
  c.robust.suite = "standard"  # a name in mtajax.robust.SUITES
  c.robust.eps = ml_collections.config_dict.placeholder(tuple)  # None: the grid's eps
  c.robust.threshold = ml_collections.config_dict.placeholder(float)  # stop at s_b >= threshold
  c.robust.seed = 0  # random starts
  # Images per attacked chunk (None: the eval batch); e.g. 128 on a GPU: all test images at once.
  c.robust.chunk = ml_collections.config_dict.placeholder(int)
  c.advtrain = ml_collections.ConfigDict()  # `advtrain` mode: overrides of train.adv
  c.advtrain.mode = "reference"
  c.advtrain.direction = "gbmta"
  c.advtrain.eps = 8.0
  c.advtrain.num_steps = 10
  # Scale-out (mtajax.parallel): data-parallel devices (None = all devices of all processes) and
  # jax.distributed settings (None fields are detected on TPU pods, SLURM and Open MPI).
  c.mesh = ml_collections.config_dict.placeholder(int)
  c.distributed = ml_collections.ConfigDict()
  c.distributed.enabled = False
  c.distributed.coordinator_address = ml_collections.config_dict.placeholder(str)
  c.distributed.num_processes = ml_collections.config_dict.placeholder(int)
  c.distributed.process_id = ml_collections.config_dict.placeholder(int)
  c.distributed.cpu_collectives = "gloo"  # CPU only: 'gloo' or 'mpi'; ignored on GPU/TPU
  return c


def smoke(c: ml_collections.ConfigDict, num_tasks: int = 3) -> None:
  """Shrinks a paper config to a CI-sized run of the same shape on the embedded benchmark."""
  t = c.train
  c.workdir = c.workdir + "_smoke"
  t.dataset, t.data_dir = "synthetic", "runs/tfds"
  t.data_config = dict(resolution=32, num_train=32, num_test=8, seed=0)
  t.train_split, c.eval_split = "train", "test"
  t.tasks = ("segment_semantic", "normal", "depth_zbuffer", "keypoints2d", "edge_texture")[:num_tasks]
  t.backbone, t.width = "small", 4
  t.batch_size, t.num_steps, t.lr = 4, 40, 5e-3  # enough for non-zero clean metrics (defined ARP)
  t.eval_every = t.checkpoint_every = 20
  t.eval_batch_size, t.eval_max_batches = 4, 1
  c.layouts = c.layouts[:2]
  c.attacks, c.directions, c.eps = ("fgsm", "pgd"), ("total", "gbmta"), (8.0,)
  c.num_steps = 2
  c.eval_batch_size, c.eval_max_batches = 4, 1
  c.examples_eps = (8.0,)
  c.robust.suite = "smoke"
