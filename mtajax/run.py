"""The main job.

    python -m mtajax.run [MODE] [--config configs/FILE.py[:ARG]] [--config.KEY=VALUE ...]

Modes: ``sweep`` (the default: train missing models, attack them, robust-evaluate them
(``config.robust``), write the report), ``robust`` (train missing models, robust-evaluate them),
``train``, ``attack`` (models must be trained), ``advtrain`` (adversarially train the config's
layouts, then attack them next to their clean-trained versions), ``report``, ``layouts`` (paper
Tables 16/17), ``import`` (store a TreeMTL / DGBA PyTorch checkpoint, ``--config.checkpoint=PATH``,
as the final model of its layout, which the other modes then use without training), ``defend``
(train ``config.defend``'s defences, robust-evaluate them, check them for gradient masking and
write the defence leaderboard: ``mtajax.defend``).
With no arguments it runs the quickstart on the embedded benchmark (``configs/quickstart.py``).
Bad input exits with status 2 and a one-line ``error:`` message; results already stored are kept.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

import mtajax  # noqa: F401  (XLA:CPU workaround before JAX starts)
from mtajax import defend
from mtajax import models
from mtajax import parallel
from mtajax import phases
from mtajax import results
from mtajax import robust_sweep
from mtajax import run_import
from mtajax import run_report
from mtajax import sweep
from mtajax.train import ensure

MODES = ("sweep", "train", "attack", "advtrain", "report", "layouts", "import", "robust",
         "defend")


def config_path(path: str) -> str:
  """``path[:arg]`` itself if that file exists, else the file of that name in the installed
  ``configs`` package (so ``--config configs/quickstart.py`` works from any directory)."""
  file, sep, arg = path.partition(":")
  if not pathlib.Path(file).exists():
    spec = importlib.util.find_spec("configs")
    shipped = [pathlib.Path(d) / pathlib.Path(file).name
               for d in (spec.submodule_search_locations or []) if spec] if spec else []
    file = next((str(p) for p in shipped if p.is_file()), file)
  return file + sep + arg


_CONFIG = None  # The --config flag, defined by `define_config_flag` when run as the main program.


def define_config_flag() -> None:
  """Defines ``--config`` (ml_collections reads the ``--config.KEY`` overrides of ``sys.argv``
  here already), resolving config names first; bad input: one ``error:`` line, exit status 2."""
  global _CONFIG
  sys.argv[1:] = [_resolve_config_arg(a, b) for a, b in zip(sys.argv[1:], sys.argv[:-1])]
  try:
    _CONFIG = config_flags.DEFINE_config_file(
        "config", config_path("configs/quickstart.py"),
        "Run config (ml_collections get_config file; a path, or configs/NAME.py of the installed "
        "configs).", lock_config=True)
  except Exception as e:  # pylint: disable=broad-except
    _exit_bad_flags(e)


def run(mode: str, config) -> None:
  """Runs one mode (see the module docstring)."""
  if mode not in MODES:
    raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}.")
  sweep.validate(config, data=mode not in ("layouts", "report"))
  parallel.initialize(config)
  print(f"mtajax {mode}: workdir {config.workdir}, process {jax.process_index()} of "
        f"{jax.process_count()}, devices {jax.devices()}")
  if mode == "layouts":
    indices = [i for i in config.layouts if isinstance(i, int)] or None
    print(models.format_layout_table(
        models.layout_table(config.train.backbone, len(config.train.tasks), indices)))
    return
  if mode == "import":
    print(f"import: {config.checkpoint} -> {run_import.import_checkpoint(config)}")
    return
  if mode == "defend":
    print(f"defend: report {defend.run(config, parallel.make_mesh(config.mesh))}")
    return
  if mode == "report":
    store = results.Store(pathlib.Path(config.workdir) / "results.jsonl")
    print(f"report: {run_report.report(config, store)}")
    return
  workdir = pathlib.Path(config.workdir)
  examples = run_report.load_examples(workdir / run_report.EXAMPLES,
                                       run_report.examples_key(config))  # None: to be made.
  if mode == "attack":
    stored = results.Store(workdir / "results.jsonl", write=False)
    for i, layout in enumerate(config.layouts):
      t = ensure.train_config(config, layout)
      needed = (examples is None and i == 0) or not all(
          k in stored for k in sweep.model_keys(config, t))
      if needed and not (workdir / "models" / ensure.model_id(t)).is_dir():
        raise ValueError(f"model {ensure.model_id(t)} is not trained in {config.workdir}; run the "
                         "'train' or 'sweep' mode first.")
  if mode == "robust":
    store, targets = robust_sweep.run(config, examples=examples is None)
  else:
    keys = None  # A model is not loaded once its grid records (and robust ones, if run) are stored.
    if mode == "sweep" and config.robust.enabled:
      robust_sweep.validate(config)
      keys = lambda t: sweep.model_keys(config, t) | robust_sweep.model_keys(config, t)  # pylint: disable=unnecessary-lambda-assignment
    store, targets = sweep.run(config, train_only=mode == "train", adversarial=mode == "advtrain",
                               keys=keys, examples=examples is None)
    if mode == "sweep" and config.robust.enabled:
      with phases.PHASES("robust"):
        robust_sweep.robust_records(config, targets, store, parallel.make_mesh(config.mesh))
  if mode == "train" or not parallel.is_writer():
    return
  with phases.PHASES("report"):
    # Process 0 alone makes the examples: on the mesh of a one-process run (the grid's compiled
    # programs), on its own device in a multi-process one (a global mesh would wait for the rest).
    # Stored examples of the same model and ε are reused (a complete workdir needs no model).
    if examples is None:
      mesh = parallel.make_mesh(config.mesh) if jax.process_count() == 1 else None
      path = run_report.report(config, store, sweep.examples(config, targets[0], mesh))
    else:
      path = run_report.report(config, store)
  print(f"{len(store)} records in {pathlib.Path(config.workdir) / 'results.jsonl'}; report: {path}")
  print(f"phases (wall and JAX compile seconds):\n{phases.PHASES.summary()}")


def main(argv: list[str]) -> None:
  if len(argv) > 2:
    print(f"error: expected at most one mode, got {' '.join(argv[1:])}; use one of "
          f"{', '.join(MODES)}.", file=sys.stderr)
    sys.exit(2)
  logging.set_verbosity(logging.ERROR)  # Orbax and TFDS log every step at INFO.
  jax.config.update("jax_compilation_cache_dir",
                    os.path.expanduser(os.environ.get("MTAJAX_JAX_CACHE", "~/.cache/mtajax/jax")))
  # Programs that compile in under a second are not worth a cache file, unless JAX's own variable
  # says otherwise (the tests share one cache across their processes with 0).
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float(
      os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", 1.0)))
  try:
    run(argv[1] if len(argv) > 1 else "sweep", _CONFIG.value)
  except (ValueError, KeyError, OSError) as e:
    print(f"error: {e}".splitlines()[0], file=sys.stderr)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing and config loading with a one-line ``error:`` and exit status 2 for a
  missing or broken config file, an unknown ``--config.KEY`` or a value of the wrong type."""
  try:
    rest = flags.FLAGS(argv)
    _CONFIG.value.workdir  # pylint: disable=pointless-statement  (raises if the file failed)
    return rest
  except Exception as e:  # pylint: disable=broad-except  (absl, ml_collections, the config file)
    _exit_bad_flags(e)


def _exit_bad_flags(e: Exception) -> None:
  if isinstance(e, (AttributeError, KeyError)):
    print(f"error: unknown config key {str(e).strip(chr(34))}; see the config file for the keys.",
          file=sys.stderr)
  else:
    lines = str(e).strip().splitlines() or [type(e).__name__]
    message = lines[-1].strip() if isinstance(e, OSError) else lines[0]  # The file's own error.
    print(f"error: bad flag, config file or config override: {message}", file=sys.stderr)
  sys.exit(2)


def _resolve_config_arg(arg: str, previous: str) -> str:
  if arg.startswith("--config="):
    return "--config=" + config_path(arg[len("--config="):])
  return config_path(arg) if previous == "--config" else arg


if __name__ == "__main__":
  define_config_flag()
  app.run(main, flags_parser=parse_flags)
