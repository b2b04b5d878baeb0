"""The defence leaderboard on the embedded benchmark: AS and IND, two seeds, FAT, the reference
recipe, PGD adversarial training along GB-MTA, TRADES and mixed batches next to the undefended model, judged by the `standard` and `thorough` suites at ε 4 and 8
and the gradient-masking checks (mtajax.masking).

    python -m mtajax.run defend --config configs/defend.py
    python -m mtajax.run defend --config configs/defend.py:cpu      # 2-core-CPU-sized
    python -m mtajax.run defend --config configs/defend.py:smoke    # CI-sized

A recipe is a dict of overrides of `train.adv` (mtajax/train/config.py); add one with e.g.
`--config.defend.recipes.fat.eps=4`, or in this file.
"""

import ml_collections

from configs import common
from configs import quickstart


def get_config(arg: str | None = None):
  args = common.parse_arg(arg)
  c = quickstart.get_config()
  c.workdir = "runs/defend"
  c.layouts = (0, 2)  # AS, IND (quickstart's names)
  c.robust.enabled = False
  d = c.defend = ml_collections.ConfigDict()
  d.seeds = (0, 1)
  d.recipes = {
      "fat": {"mode": "fat", "eps": 8.0, "num_steps": 20},  # the paper's K = tau = 20
      "reference": {"mode": "reference", "eps": 8.0},
      # PGD from a random start along GB-MTA (Madry-style), TRADES and half-clean batches
      # (mtajax.train.recipes), 10 steps each.
      "pgd_gbmta": {"mode": "adversarial", "attack": "pgd", "direction": "gbmta", "eps": 8.0,
                    "attack_options": {"random_start": True}},
      "trades": {"mode": "trades", "eps": 8.0, "beta": 6.0},
      # The same PGD at twice the ε: the most robust point of the CPU screen (docs/defence.md).
      "pgd_gbmta_e16": {"mode": "adversarial", "attack": "pgd", "direction": "gbmta", "eps": 16.0,
                        "attack_options": {"random_start": True}},
      "mixed": {"mode": "mixed", "eps": 8.0, "clean_fraction": 0.5,
                "attack_options": {"random_start": True}},
  }
  d.eps = (4.0, 8.0)
  d.suites = ("standard", "thorough")
  d.robust_seed = 0  # random starts of every suite and check
  m = d.masking = ml_collections.ConfigDict()
  m.suite = "standard"  # the checks' suite (its stored robust ARPs are reused)
  m.large_eps = 64.0  # 64/255 of the pixel range: the model must break there
  m.broken_arp = 50.0  # robust ARP (%) at large_eps that counts as broken
  m.eps_tolerance = 1.0  # ARP points the robust ARP may fall from one ε to the next
  m.transfer_tolerance = 1.0  # ARP points a transfer attack may exceed the white-box one by
  m.steps_factor = 2  # robust.scaled_suite factor of steps and restarts
  m.steps_tolerance = 1.0  # ARP points those may add
  m.min_grad_share = 0.95  # images whose input gradients must be non-zero, per task
  if args.get("cpu"):
    # The leaderboard sized for a 2-core CPU (~2 h, measured on shared cores): the `fast` suite at ε 4 and 8, the checks
    # with `quick`, every test image attacked in one chunk; no `mixed` (the screen's weakest).
    c.workdir = "runs/defend_cpu"
    c.robust.chunk = 128
    d.recipes = {k: v for k, v in d.recipes.items() if k != "mixed"}
    d.suites = ("fast",)
    m.suite = "quick"
  if args.get("smoke"):
    c.workdir = "runs/defend_smoke"
    t = c.train
    t.data_config = dict(resolution=16, num_train=32, num_test=8, seed=0)
    t.width, t.batch_size, t.num_steps, t.lr = 4, 8, 20, 5e-3
    t.eval_every = t.checkpoint_every = 20
    t.eval_batch_size, t.eval_max_batches = 8, 1
    t.progress_bar = False
    c.eval_batch_size, c.eval_max_batches = 8, 1
    c.layouts = (0,)
    d.seeds = (0,)
    d.recipes = {"fat": {"mode": "fat", "eps": 8.0, "num_steps": 2, "tau": 1},
                 "reference": {"mode": "reference", "eps": 8.0, "num_steps": 2}}
    d.suites = ("smoke",)
    m.suite = "smoke"
  return c
