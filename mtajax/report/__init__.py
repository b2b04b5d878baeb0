"""The Markdown report: paper-style tables, PNG figures and computed findings from result records.

``write_report(records, out_dir)`` writes ``out_dir/report.md`` and its figures, one section
per (dataset, backbone, tasks); a piece the records cannot support (no APGD, no adversarial
training, one sharing level) is replaced by a one-line note.
"""

from __future__ import annotations

import os
import pathlib
import re
from typing import Any, Callable, Iterable, Mapping

from mtajax import results
from mtajax.report import records as rec_lib
from mtajax.report import study
from mtajax.report import robust as robust_lib
from mtajax.report import tables
from mtajax.report.figures import (figure_arp_vs_eps, figure_examples, figure_per_task,
                                   figure_transfer, save_png)
from mtajax.report.findings import findings
from mtajax.report.records import MissingData, Record, check, load
from mtajax.report.tables import arp_table, at_table, per_task_table, transfer_table

__all__ = [
    "MissingData", "arp_table", "at_table", "check", "figure_arp_vs_eps", "figure_examples",
    "figure_per_task", "figure_transfer", "findings", "load", "per_task_table", "save_png",
    "transfer_table", "write_report",
]

REPORT_NAME = "report.md"


def _slug(*parts: str) -> str:
  return re.sub(r"[^A-Za-z0-9]+", "-", "_".join(parts)).strip("-").lower()


def _piece(make: Callable[[], str]) -> str:
  try:
    return make()
  except MissingData as e:
    return f"_Skipped: {e}._\n"


def _figure(out_dir: pathlib.Path, name: str, title: str, make: Callable[[], Any]) -> str:
  try:
    fig = make()
  except MissingData as e:
    return f"_{title} skipped: {e}._"
  save_png(fig, out_dir / name)
  return f"![{title}]({name})"


def _at_attack(records: list[Record], eps: float) -> str:
  """PGD (as paper Table 3) when the adversarially trained models have it, else their first."""
  present = rec_lib.attacks_present(
      [r for r in rec_lib.select(records, eps=eps) if r["adv_training"] != rec_lib.NO_AT])
  if not present:
    raise MissingData(f"no attacked adversarially trained models at ε={eps:g}")
  return "pgd" if "pgd" in present else present[0]


def _group_section(records: list[Record], out_dir: pathlib.Path, prefix: str,
                   eps: float | None, attack_for_transfer: str | None,
                   robust: list[Record]) -> list[str]:
  try:
    eps = rec_lib.default_eps(records) if eps is None else eps
  except MissingData:
    return ["_No attacked records in this group._", ""]
  out = ["### Findings", "", findings(records, eps, attack_for_transfer)]
  out += [f"### Table 1/2 layout: ARP (%) per model, base attack and direction, ε={eps:g}", "",
          "Rows: clean-trained models by sharing level (leading coarse blocks shared by all tasks; "
          "AS = all-shared, IND = independent); Single-x columns are named by the task; the "
          "strongest direction per (model, attack) is bold. For Auto-SAGE, Total is the "
          "reference's baseline (AS_Ori). Robust ARP: the robust evaluation's worst case.", "",
          _piece(lambda: arp_table(records, eps, robust))]
  try:  # Records without clean metrics (hand-made ones) have no such section.
    out += ["### Clean metrics of the models", "",
            "What the attacks start from (the reference's units: mIoU and Pixel Acc as fractions, "
            "angles in degrees, depth errors in the label's units, δ ratios in %).", "",
            tables.clean_table(records)]
  except MissingData:
    pass
  at_records = [r for r in records if r["adv_training"] != rec_lib.NO_AT]
  if at_records:
    out += [f"### Table 3 layout: adversarially trained models, ε={eps:g}", ""]
    bases = [m for m in rec_lib.models(records) if _has_variants(records, m.model)]
    for base in bases:
      def make(base=base):
        attack = _at_attack(records, eps)
        return (f"Model {base.label}, attacked by {rec_lib.attack_label(attack)}:\n\n" +
                at_table(records, base.model, attack, eps))
      out += [_piece(make)]
    if not bases:
      out += ["_Skipped: no clean-trained model with the adversarially trained models' layout._",
              ""]
  levels = {m.sharing_level for m in rec_lib.models(records)}
  out += [f"### Table 12 layout: transferability (Eq. 11) of Single-x vs sharing level, "
          f"ε={eps:g}", ""]
  if len(levels) >= 2:
    out += [_piece(lambda: _transfer_caption(records, eps, attack_for_transfer) +
                   transfer_table(records, attack_for_transfer, eps))]
  else:
    out += [f"_Skipped: it needs clean-trained models at ≥ 2 sharing levels, found "
            f"{len(levels)}._", ""]
  out += [f"### Per-task ARP (numbers of Fig. 1), ε={eps:g}", "",
          _piece(lambda: _per_task_caption(records, eps) + per_task_table(records, eps=eps))]
  out += ["### Figures", ""]
  out += [_figure(out_dir, f"{prefix}fig1_per_task.png", "Fig. 1: per-task ARP per direction",
                  lambda: figure_per_task(records, eps=eps)), ""]
  out += [_figure(out_dir, f"{prefix}fig2_arp_vs_eps.png", "Fig. 2: mean ARP vs ε",
                  lambda: figure_arp_vs_eps(records)), ""]
  if len(levels) >= 2:
    out += [_figure(out_dir, f"{prefix}fig4_transfer.png",
                    "Fig. 4: transferability vs sharing level",
                    lambda: figure_transfer(records, attack_for_transfer, eps)), ""]
  return out


def _robust_section(every: list[Record], suite: str, grid: list[Record], out_dir: pathlib.Path,
                    prefix: str, eps: float | None) -> list[str]:
  """The robust records of ``suite`` (``every``: those of all suites, for the gap to thorough)."""
  robust = robust_lib.of_suite(every, suite)
  if not robust:
    return []
  eps = rec_lib.default_eps(robust) if eps is None else eps
  other = ("" if suite in robust_lib.REFERENCE_SUITES else
           f" (not a reference suite: {', '.join(robust_lib.REFERENCE_SUITES)})")
  gap = robust_lib.suite_gap(every, suite, eps)
  return [f"### Robust evaluation: leaderboard, ε={eps:g}, suite `{suite}`{other}", ""] + (
      [gap] if gap else []) + [
          "Robust ARP: the dataset ARP of the worst case per image over the suite's attacks "
          "(never below any of them alone); envelope: per task, the ARP-x of that task's own "
          "worst case.", "",
          _piece(lambda: robust_lib.leaderboard(robust, grid, eps)),
          _piece(lambda: robust_lib.convergence_note(robust, eps)),
          _piece(lambda: robust_lib.compute_note(robust, grid, eps)),
          _figure(out_dir, f"{prefix}robust_arp.png", "Robust ARP vs sharing level and ε",
                  lambda: robust_lib.figure_robust(robust)), "",
          _figure(out_dir, f"{prefix}robust_trajectory.png",
                  "Robust ARP against passes per image as the candidates accumulate",
                  lambda: robust_lib.figure_trajectory(robust, eps)), ""]


def _has_variants(records: list[Record], model: str) -> bool:
  try:
    tables.at_variants(records, model)
  except MissingData:
    return False
  return True


def _transfer_caption(records: list[Record], eps: float, attack: str | None) -> str:
  attack = rec_lib.transfer_attack(records, eps, attack)
  return f"Attack: {rec_lib.attack_label(attack)}.\n\n"


def _per_task_caption(records: list[Record], eps: float) -> str:
  model, attack, _ = tables.per_task_defaults(records, None, None, eps)
  label = rec_lib.models(rec_lib.select(records, model=model), clean_trained=None)[0].label
  return f"Model {label}, {rec_lib.attack_label(attack)}.\n\n"


def _study_section(records: list[Record], out_dir: pathlib.Path, prefix: str,
                   eps: float | None) -> list[str]:
  try:
    eps = rec_lib.default_eps(records) if eps is None else eps
  except MissingData:
    return []
  return [f"### Directions × attack losses, ε={eps:g}", "",
          "ARP (%) of each multi-task direction (GB-MTA, Total and the gradient-balancing rules "
          "MGDA, PCGrad, IMTL-G, CAGrad, Nash-MTL) with each attack loss (`default` = the "
          "training loss; SegPGD, CosPGD, SEA's masked CE and JS act on the segmentation head, "
          "CosPGD also on the others). The strongest per column is bold.", "",
          _piece(lambda: study.findings(records, eps)),
          _piece(lambda: study.directions_table(records, eps)),
          _figure(out_dir, f"{prefix}directions_losses.png",
                  "Directions × attack losses: mean ARP",
                  lambda: study.figure_directions(records, eps)), ""]


def write_report(records: Iterable[Record], out_dir: str | os.PathLike[str], *,
                 eps: float | None = None, attack_for_transfer: str | None = None,
                 examples: Mapping[str, Any] | None = None,
                 robust_suite: str | None = None) -> pathlib.Path:
  """Writes ``out_dir/report.md`` and its PNG figures (each file atomically); returns the path.

  Args:
    records: result records (``records.load`` reads a results.jsonl).
    out_dir: created if missing; figures are linked relative to it.
    eps: ε of the tables and findings; default the largest ε ≤ 8 of each group.
    attack_for_transfer: base attack of Table 12 / Fig. 4; default APGD, else PGD.
    examples: keyword arguments of ``figure_examples`` for Fig. 6 (optional).
    robust_suite: the suite of the robust evaluation shown; default the last robust record's (the
      records of other suites only give a non-reference suite its gap to ``thorough``).
  """
  records, robust = robust_lib.split(records)
  records = check(records)
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  example_fig = None if examples is None else figure_examples(**examples)
  attacked = rec_lib.attacked(records)
  eps_grid = ", ".join(f"{e:g}" for e in rec_lib.eps_values(records)) or "–"
  attacks = ", ".join(rec_lib.attack_label(a) for a in rec_lib.attacks_present(records)) or "–"
  lines = ["# mtajax report", "",
           f"{len(records)} records ({len(attacked)} attacked) of "
           f"{len({r['model'] for r in records})} models; ε grid {eps_grid}; attacks {attacks}. "
           "ARP (paper Eq. 10) in %, higher = stronger attack.", ""]
  if not records:
    lines += ["_No records yet: run an attack or a sweep first._", ""]
  robust_groups = rec_lib.groups(robust)
  for (dataset, backbone, tasks), group in rec_lib.groups(records + robust).items():
    short = [rec_lib.task_label(t) for t in tasks]
    prefix = _slug(dataset, backbone, *short) + "_"
    lines += [f"## {dataset} / {backbone} / {', '.join(short)}", ""]
    grid = [r for r in study.default_loss(group) if r["attack"] != robust_lib.ROBUST]
    every = robust_groups.get((dataset, backbone, tasks), [])
    suite = robust_lib.shown_suite(every, robust_suite) if every else ""
    lines += _group_section(grid, out_dir, prefix, eps, attack_for_transfer,
                            robust_lib.of_suite(every, suite))
    lines += _robust_section(every, suite, grid, out_dir, prefix, eps)
    if study.applies(group):
      lines += _study_section([r for r in group if r["attack"] != robust_lib.ROBUST], out_dir,
                              prefix, eps)
  if example_fig is not None:
    save_png(example_fig, out_dir / "fig6_examples.png")
    lines += ["## Fig. 6: an image, its adversarial versions and the predictions", "",
              "![Fig. 6: adversarial examples](fig6_examples.png)", ""]
  path = out_dir / REPORT_NAME
  results.write_atomic(path, ("\n".join(lines).rstrip() + "\n").encode())
  return path
