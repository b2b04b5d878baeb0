"""The main job.

    python -m mtajax.run [MODE] [--config configs/FILE.py[:ARG]] [--config.KEY=VALUE ...]

Modes: ``sweep`` (the default: train missing models, attack them, robust-evaluate them
(``config.robust``), write the report), ``robust`` (train missing models, robust-evaluate them),
``train``, ``attack`` (models must be trained), ``advtrain`` (adversarially train the config's
layouts, then attack them next to their clean-trained versions), ``report``, ``layouts`` (paper
Tables 16/17).
With no arguments it runs the quickstart on the embedded benchmark (``configs/quickstart.py``).
Bad input exits with status 2 and a one-line ``error:`` message; results already stored are kept.
"""

from __future__ import annotations

import os
import pathlib
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

import mtajax  # noqa: F401  (XLA:CPU workaround before JAX starts)
from mtajax import models
from mtajax import parallel
from mtajax import results
from mtajax import robust_sweep
from mtajax import sweep

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODES = ("sweep", "train", "attack", "advtrain", "report", "layouts", "robust")
sys.path.insert(0, str(ROOT))  # configs/*.py import configs.common
_CONFIG = config_flags.DEFINE_config_file("config", str(ROOT / "configs" / "quickstart.py"),
                                          "Run config (ml_collections get_config file).",
                                          lock_config=True)


def report(config, store: results.Store, examples=None) -> pathlib.Path:
  """Writes the Markdown report and figures of all stored records."""
  from mtajax import report as report_lib  # pylint: disable=g-import-not-at-top
  workdir = pathlib.Path(config.workdir)
  saved = workdir / "examples.npz"
  if examples is not None:
    _save_examples(saved, examples)
  elif saved.exists():
    examples = _load_examples(saved)
  records = [r for r in store.records() if r["attack"] == "clean" or r["arp"] is not None]
  skipped = len(store) - len(records)
  if skipped:
    print(f"report: {skipped} records without an ARP are left out (a clean metric is 0: "
          "train the models longer); see their 'note' in results.jsonl.")
  return report_lib.write_report(records, workdir / "report", eps=config.report_eps,
                                 examples=examples)


def _save_examples(path: pathlib.Path, ex) -> None:
  import numpy as np  # pylint: disable=g-import-not-at-top
  arrays = {"image_rgb": ex["image_rgb"]}
  arrays.update({f"perturbed/{k}": v for k, v in ex["perturbed"].items()})
  arrays.update({f"clean/{k}": v for k, v in ex["preds_clean"].items()})
  arrays.update({f"adv/{k}": v for k, v in ex["preds_adv"].items()})
  tmp = path.with_name(path.name + ".tmp.npz")
  np.savez(tmp, tasks=np.array(ex["tasks"]), **arrays)
  os.replace(tmp, path)


def _load_examples(path: pathlib.Path):
  import numpy as np  # pylint: disable=g-import-not-at-top
  with np.load(path) as z:
    group = lambda p: {k[len(p):]: z[k] for k in z.files if k.startswith(p)}  # pylint: disable=unnecessary-lambda-assignment
    return {"image_rgb": z["image_rgb"], "tasks": list(z["tasks"]),
            "perturbed": {float(k): v for k, v in group("perturbed/").items()},
            "preds_clean": group("clean/"), "preds_adv": group("adv/")}


def run(mode: str, config) -> None:
  """Runs one mode (see the module docstring)."""
  if mode not in MODES:
    raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}.")
  parallel.initialize(config)
  print(f"mtajax {mode}: workdir {config.workdir}, process {jax.process_index()} of "
        f"{jax.process_count()}, devices {jax.devices()}")
  if mode == "layouts":
    indices = [i for i in config.layouts if isinstance(i, int)] or None
    print(models.format_layout_table(
        models.layout_table(config.train.backbone, len(config.train.tasks), indices)))
    return
  if mode == "report":
    store = results.Store(pathlib.Path(config.workdir) / "results.jsonl")
    print(f"report: {report(config, store)}")
    return
  if mode == "attack":
    for layout in config.layouts:
      t = sweep.train_config(config, layout)
      if not (pathlib.Path(config.workdir) / "models" / sweep.model_id(t)).is_dir():
        raise ValueError(f"model {sweep.model_id(t)} is not trained in {config.workdir}; run the "
                         "'train' or 'sweep' mode first.")
  if mode == "robust":
    store, targets = robust_sweep.run(config)
  else:
    if mode == "sweep" and config.robust.enabled:
      robust_sweep.validate(config)
    store, targets = sweep.run(config, train_only=mode == "train",
                               adversarial=mode == "advtrain")
    if mode == "sweep" and config.robust.enabled:
      robust_sweep.evaluate_models(config, targets, store, parallel.make_mesh(config.mesh))
  if mode == "train" or not parallel.is_writer():
    return
  path = report(config, store, sweep.examples(config, targets[0]))
  print(f"{len(store)} records in {pathlib.Path(config.workdir) / 'results.jsonl'}; report: {path}")


def main(argv: list[str]) -> None:
  if len(argv) > 2:
    raise app.UsageError(f"expected at most one mode, got {argv[1:]}")
  logging.set_verbosity(logging.ERROR)  # Orbax and TFDS log every step at INFO.
  if _CONFIG.value.xla_fast_compile:  # Must precede the backend's start (the first jax.devices()).
    xla_flags = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" not in xla_flags:
      os.environ["XLA_FLAGS"] = f"{xla_flags} --xla_backend_optimization_level=0".strip()
  jax.config.update("jax_compilation_cache_dir",
                    os.path.expanduser(os.environ.get("MTAJAX_JAX_CACHE", "~/.cache/mtajax/jax")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  try:
    run(argv[1] if len(argv) > 1 else "sweep", _CONFIG.value)
  except (ValueError, KeyError, OSError) as e:
    print(f"error: {e}".splitlines()[0], file=sys.stderr)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with a one-line error (e.g. an unknown ``--config.KEY``) and exit status 2."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    print(f"error: unknown config key {str(e).strip(chr(34))}; see the config file for the keys.",
          file=sys.stderr)
  except Exception as e:  # pylint: disable=broad-except  (absl raises several flag error types)
    message = str(e).splitlines()[0] if str(e) else type(e).__name__
    print(f"error: bad flag or config override: {message}", file=sys.stderr)
  sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
