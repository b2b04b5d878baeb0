"""The robust evaluation in the report: leaderboard, Robust ARP column values, figure, compute.

Robust records (``"attack": "robust"``, written by :mod:`mtajax.robust_sweep`) carry the robust
ARP, the per-task envelope, the clean and worst-case metrics and the compute of the suite and of
the paper grid (forward + backward passes per image at one ε); newer ones also whether the number
converged (``trajectory``, ``at_last_step``, ``converged``: :mod:`mtajax.robust`), which older
records lack (the report then says "not recorded").
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

from matplotlib import figure as mpl_figure
import numpy as np

from mtajax import robust as robust_lib
from mtajax.report import figures
from mtajax.report import records as rec_lib
from mtajax.report import tables
from mtajax.report.records import Record

ROBUST = "robust"
REFERENCE_SUITES = ("standard", "thorough")  # the suites a report is measured by
REQUIRED = ("model", "eps", "tasks", "arp", "envelope", "clean_metrics", "passes_per_image",
            "grid_passes_per_image", "sharing_level", "layout", "adv_training")


def split(records: Iterable[Record]) -> tuple[list[Record], list[Record]]:
  """(grid and clean records, checked robust records)."""
  grid, robust = [], []
  for rec in records:
    if isinstance(rec, dict) and rec.get("attack") == ROBUST:
      missing = [k for k in REQUIRED if k not in rec]
      if missing:
        raise ValueError(f"robust record {rec.get('key')!r} lacks {missing}; write it with "
                         "mtajax.robust_sweep.")
      if not math.isfinite(float(rec["arp"])):
        raise ValueError(f"robust record {rec.get('key')!r} has ARP {rec['arp']}; re-run it.")
      robust.append(rec)
    else:
      grid.append(rec)
  return grid, robust


def _best_cell(grid: Sequence[Record], model: str, eps: float) -> Record | None:
  cells = [r for r in rec_lib.select(rec_lib.attacked(grid), model=model, eps=eps)
           if r["arp"] is not None]
  return max(cells, key=lambda r: r["arp"]) if cells else None


def leaderboard(robust: Sequence[Record], grid: Sequence[Record], eps: float) -> str:
  """One row per model at ``eps``: sharing, clean metrics, Robust ARP, best grid cell, envelope."""
  at_eps = [r for r in robust if rec_lib.same_eps(r["eps"], eps)]
  if not at_eps:
    raise rec_lib.MissingData(f"no robust records at ε={eps:g}")
  last = {r["model"]: r for r in at_eps}
  tasks = at_eps[0]["tasks"]
  clean_cols = [(t, m) for t in tasks for m in at_eps[0]["clean_metrics"][t]]
  header = (["Model", "Sharing"] +
            [f"{rec_lib.task_label(t)} {m}" for t, m in clean_cols] +
            ["**Robust ARP**", "Best grid cell"] +
            [f"Envelope {rec_lib.task_label(t)}" for t in tasks] + ["Passes/img (grid)",
                                                                     "Converged"])
  rows = []
  order = sorted(last.values(), key=lambda r: (-int(r["sharing_level"]), rec_lib.model_label(r)))
  for r in order:
    best = _best_cell(grid, r["model"], eps)
    cell = "–" if best is None else (f"{rec_lib.fmt(best['arp'])} "
                                    f"({rec_lib.attack_label(best['attack'])} "
                                    f"{rec_lib.direction_label(best['direction'])})")
    label = rec_lib.model_label(r)
    if r["adv_training"] != rec_lib.NO_AT:
      label += f" {rec_lib.adv_training_label(r['adv_training'])}"
    rows.append([label, f"{r['sharing_level']}L"] +
                [f"{r['clean_metrics'][t][m]:.4g}" for t, m in clean_cols] +
                [f"**{rec_lib.fmt(r['arp'])}**", cell] +
                [rec_lib.fmt(r["envelope"][t]) for t in tasks] +
                [f"{r['passes_per_image']:.0f} ({r['grid_passes_per_image']:.0f})",
                 _converged_cell(r)])
  return tables.markdown(header, rows)


def compute_note(robust: Sequence[Record], grid: Sequence[Record], eps: float) -> str:
  """One sentence: the suite's compute next to the grid's at ``eps``."""
  at_eps = [r for r in robust if rec_lib.same_eps(r["eps"], eps)]
  if not at_eps:
    raise rec_lib.MissingData(f"no robust records at ε={eps:g}")
  suite = np.mean([r["passes_per_image"] for r in at_eps])
  grid_passes = np.mean([r["grid_passes_per_image"] for r in at_eps])
  seconds = sum(float(r.get("time_s", 0.0)) for r in at_eps)
  compiling = sum(float(r.get("compile_s", 0.0)) for r in at_eps)
  grid_seconds = sum(float(r.get("time_s", 0.0)) for r in rec_lib.attacked(grid)
                     if rec_lib.same_eps(r["eps"], eps))
  return (f"Compute at ε={eps:g}: the suite ({at_eps[0].get('suite', '?')}) spent {suite:.0f} "
          f"forward + backward passes per image, the paper grid {grid_passes:.0f} "
          f"(ratio {suite / grid_passes:.2f}); wall time {seconds:.0f} s (of which compiling "
          f"{compiling:.0f} s) vs {grid_seconds:.0f} s "
          f"for the grid's attacked records, over {len(at_eps)} models. The robust ARP is the "
          "worst case per image over the suite's candidates (never an average).\n")


def figure_robust(robust: Sequence[Record]) -> mpl_figure.Figure:
  """Robust ARP against sharing level, one line per ε (clean-trained models; mean per level)."""
  clean_trained = [r for r in robust if r["adv_training"] == rec_lib.NO_AT]
  if not clean_trained:
    raise rec_lib.MissingData("no robust records of clean-trained models")
  fig = figures.new_figure(4.2, 3.3)
  ax = fig.add_subplot()
  for eps in sorted({float(r["eps"]) for r in clean_trained}):
    last = {r["model"]: r for r in clean_trained if rec_lib.same_eps(r["eps"], eps)}
    levels = sorted({int(r["sharing_level"]) for r in last.values()})
    ys = [np.mean([r["arp"] for r in last.values() if int(r["sharing_level"]) == lvl])
          for lvl in levels]
    ax.plot(levels, ys, marker="o", label=f"ε={eps:g}")
  ax.set_xlabel("sharing level (shared blocks)")
  ax.set_ylabel("robust ARP (%)")
  ax.set_title("Robust ARP vs sharing level", fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return fig


def suite_of(rec: Record) -> str:
  return rec.get("suite") or "unnamed"


def shown_suite(robust: Sequence[Record], suite: str | None = None) -> str:
  """``suite`` where it has records, else the suite of the last robust record."""
  if not robust:
    raise rec_lib.MissingData("no robust records")
  return suite if of_suite(robust, suite) else suite_of(robust[-1])


def of_suite(robust: Sequence[Record], suite: str) -> list[Record]:
  return [r for r in robust if suite_of(r) == suite]


def suite_gap(robust: Sequence[Record], suite: str, eps: float) -> str:
  """For a suite other than standard/thorough: its measured gap to thorough on the same models."""
  if suite in REFERENCE_SUITES:
    return ""
  at_eps = [r for r in robust if rec_lib.same_eps(r["eps"], eps)]
  ours = {r["model"]: r["arp"] for r in of_suite(at_eps, suite)}
  ref = {r["model"]: r["arp"] for r in of_suite(at_eps, "thorough")}
  common = sorted(set(ours) & set(ref))
  if not common:
    return (f"Suite `{suite}` is not a reference suite ({', '.join(REFERENCE_SUITES)}): its gap "
            f"to `thorough` is not measured on these models at ε={eps:g} (run the robust mode "
            "with config.robust.suite='thorough' to measure it).\n")
  gaps = [ref[m] - ours[m] for m in common]
  return (f"Suite `{suite}` is not a reference suite ({', '.join(REFERENCE_SUITES)}): `thorough` "
          f"finds {np.mean(gaps):+.2f} ARP points more on the same {len(common)} models at "
          f"ε={eps:g} (max {max(gaps):+.2f}).\n")


def _converged_cell(rec: Record) -> str:
  flag = rec.get("converged")
  return "–" if flag is None else ("yes" if flag else "**no**")


def convergence_note(robust: Sequence[Record], eps: float) -> str:
  """One line per model at ``eps`` whose robust ARP did not converge, and the rule."""
  last = {r["model"]: r for r in robust if rec_lib.same_eps(r["eps"], eps)}
  if not last:
    raise rec_lib.MissingData(f"no robust records at ε={eps:g}")
  lines = []
  for model, r in sorted(last.items()):
    if r.get("converged") is False:
      why = robust_lib.convergence(r["trajectory"], r["at_last_step"], r.get("wins", {}),
                                   r.get("restart_gain"))
      lines.append(f"- ⚠ **Not converged**: {rec_lib.model_label(r)} at ε={eps:g}: "
                   f"{why or 'as recorded'}.")
  unknown = [rec_lib.model_label(r) for r in last.values() if r.get("converged") is None]
  if unknown:
    lines.append(f"- Convergence not recorded for {', '.join(unknown)} (records written before "
                 "mtajax recorded it; re-run the robust mode to get it).")
  rule = (f"Converged: the last {robust_lib.CONVERGENCE_BUDGET:.0%} of the passes per image "
          f"raised the robust ARP by < {robust_lib.CONVERGENCE_GAIN:g} points and no winning "
          f"candidate returned its last iterate on ≥ {robust_lib.CONVERGENCE_LAST_STEP:.0%} of "
          "its images, and the second half of the members' restarts raised it by < "
          f"{robust_lib.CONVERGENCE_GAIN:g} points.")
  return "\n".join([rule, ""] + lines) + "\n"


def figure_trajectory(robust: Sequence[Record], eps: float) -> mpl_figure.Figure:
  """Robust ARP against cumulative passes per image as the candidates accumulate, per model."""
  last = {r["model"]: r for r in robust
          if rec_lib.same_eps(r["eps"], eps) and r.get("trajectory")}
  if not last:
    raise rec_lib.MissingData(f"no robust records with a trajectory at ε={eps:g}")
  fig = figures.new_figure(4.2, 3.3)
  ax = fig.add_subplot()
  for r in sorted(last.values(), key=rec_lib.model_label):
    points = r["trajectory"]
    ax.plot([p["passes_per_image"] for p in points], [p["arp"] for p in points], marker=".",
            label=rec_lib.model_label(r))
  ax.set_xlabel("forward + backward passes per image")
  ax.set_ylabel("robust ARP (%)")
  ax.set_title(f"Robust ARP as the candidates accumulate, ε={eps:g}", fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  return fig
