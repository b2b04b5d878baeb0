"""The ``report`` mode: the Markdown report and figures of a workdir's records, and the Fig. 6
examples it shows (``<workdir>/examples.npz``, made once per model, ε and evaluation data)."""

from __future__ import annotations

import io
import pathlib
from typing import Any

import ml_collections
import numpy as np

from mtajax import results
from mtajax import robust_sweep
from mtajax import sweep
from mtajax.train import ensure

EXAMPLES = "examples.npz"  # The Fig. 6 examples in the workdir, made once per model and ε.


def examples_key(config: ml_collections.ConfigDict) -> str:
  """The key of the Fig. 6 examples: those of the config's first clean-trained model."""
  return sweep.examples_key(config, ensure.train_config(config, config.layouts[0]))


def report(config: ml_collections.ConfigDict, store: results.Store,
           examples: dict[str, Any] | None = None) -> pathlib.Path:
  """Writes the Markdown report and figures of the config's records (all with report_history).

  ``examples`` (``sweep.examples`` of the first model) are stored in ``workdir/examples.npz``;
  without them the stored ones are used.
  """
  # Matplotlib loads only when a report is written (the other modes start faster without it).
  from mtajax import report as report_lib  # pylint: disable=g-import-not-at-top
  workdir = pathlib.Path(config.workdir)
  saved = workdir / EXAMPLES
  if examples is not None:
    save_examples(saved, examples, examples_key(config))
  elif saved.exists():
    examples = load_examples(saved)
  records = store.records()
  if not config.report_history:
    current = sweep.current_keys(config) | robust_sweep.current_keys(config)
    records = [r for r in records if r["key"] in current]
    if len(records) < len(store):
      print(f"report: {len(store) - len(records)} records of other configs (another ε grid, "
            "layout set, step count, ...) are left out; --config.report_history=True adds them.")
  kept = [r for r in records if r["attack"] == "clean" or r["arp"] is not None]
  skipped, records = len(records) - len(kept), kept
  if skipped:
    print(f"report: {skipped} records without an ARP are left out (a clean metric is 0: "
          "train the models longer); see their 'note' in results.jsonl.")
  print(f"report: writing {workdir / 'report'}")
  return report_lib.write_report(records, workdir / "report", eps=config.report_eps,
                                 examples=examples, robust_suite=config.robust.suite)


def save_examples(path: pathlib.Path, ex: dict[str, Any], key: str) -> None:
  """Stores the Fig. 6 examples ``ex`` (``sweep.examples``) made for ``key`` at ``path``."""
  arrays = {"image_rgb": ex["image_rgb"], "key": np.array(key)}
  arrays.update({f"perturbed/{k}": v for k, v in ex["perturbed"].items()})
  arrays.update({f"clean/{k}": v for k, v in ex["preds_clean"].items()})
  arrays.update({f"adv/{k}": v for k, v in ex["preds_adv"].items()})
  data = io.BytesIO()
  np.savez(data, tasks=np.array(ex["tasks"]), **arrays)
  results.write_atomic(path, data.getvalue())


def load_examples(path: pathlib.Path, key: str | None = None) -> dict[str, Any] | None:
  """The examples stored at ``path``; with ``key``: None unless they were made for it."""
  if key is not None and not path.exists():
    return None
  with np.load(path) as z:
    if key is not None and ("key" not in z.files or str(z["key"]) != key):
      return None  # Made for another model, ε or evaluation data (or before they had a key).
    group = lambda p: {k[len(p):]: z[k] for k in z.files if k.startswith(p)}  # pylint: disable=unnecessary-lambda-assignment
    return {"image_rgb": z["image_rgb"], "tasks": list(z["tasks"]),
            "perturbed": {float(k): v for k, v in group("perturbed/").items()},
            "preds_clean": group("clean/"), "preds_adv": group("adv/")}
