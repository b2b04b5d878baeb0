"""The report's robust section on hand-made robust records: convergence column, warning and figure,
old records without the convergence fields, and a non-reference suite's gap to thorough."""

from __future__ import annotations

import re

from mtajax import report

from fixtures import LAYOUTS, TASKS, is_png, make_records, rows

PREFIX = "synthetic-small-segm-norm-dept_"


def robust_record(model, arp, suite="standard", converged=True, old=False):
  """A robust record as mtajax.robust_sweep writes it (``old``: before the convergence fields)."""
  layout, level, idx = LAYOUTS[model]
  rec = {"key": f"{model}|robust|{suite}", "model": model, "dataset": "synthetic",
         "backbone": "small", "layout_idx": idx, "layout": layout, "sharing_level": level,
         "adv_training": "none", "attack": "robust", "direction": None, "suite": suite,
         "eps": 8.0, "num_steps": 0, "tasks": list(TASKS), "metrics": {},
         "clean_metrics": {t: {"m": 0.5} for t in TASKS}, "arp": arp,
         "arp_per_task": {t: arp for t in TASKS}, "envelope": {t: arp + 1 for t in TASKS},
         "candidate_arp": {"clean": 0.0, "a": arp - 1, "b": arp - 2}, "wins": {"a": 3, "b": 1},
         "passes_per_image": 100.0, "grid_passes_per_image": 50.0, "config_hash": "h",
         "devices": 1, "time_s": 1.0}
  if not old:
    last = arp if converged else arp - 2
    rec |= {"trajectory": [{"candidate": "clean", "passes_per_image": 1.0, "arp": 0.0},
                           {"candidate": "a", "passes_per_image": 60.0, "arp": last},
                           {"candidate": "b", "passes_per_image": 100.0, "arp": arp}],
            "at_last_step": {"a": 0.05, "b": 0.1}, "converged": converged}
  return rec


def test_convergence_column_warning_and_figure(tmp_path):
  # "as": converged by the trajectory, but the second half of its restarts found 0.30 more.
  restarts = robust_record("as", 40.0) | {"converged": False, "restart_gain": 0.3}
  robust = [restarts, robust_record("mid", 50.0, converged=False),
            robust_record("ind", 60.0, old=True)]
  text = report.write_report(make_records(at=False) + robust, tmp_path).read_text()
  assert "### Robust evaluation: leaderboard, ε=8, suite `standard`\n" in text
  section = text[text.index("### Robust evaluation"):]
  table = rows(section[section.index("| Model"):section.index("Converged: the last")])
  assert table["header"][-1] == "Converged"
  assert [table[label][-1] for label in ("as (AS)", "41", "ind (IND)")] == ["**no**", "**no**",
                                                                             "–"]
  warnings = [line for line in text.splitlines() if "Not converged" in line]
  assert len(warnings) == 2 and "41 at ε=8" in warnings[1]
  assert "raised the robust ARP by 2.00 points (48.00 -> 50.00" in warnings[1]
  assert "as (AS) at ε=8: the second half of the members' restarts raised the robust ARP by 0.30" \
      in warnings[0]
  assert "Convergence not recorded for ind (IND)" in text
  assert is_png(tmp_path / f"{PREFIX}robust_trajectory.png")


def test_old_records_alone_still_report(tmp_path):
  robust = [robust_record(m, a, old=True) for m, a in (("as", 40.0), ("mid", 50.0))]
  text = report.write_report(make_records(at=False) + robust, tmp_path).read_text()
  assert "**Robust ARP**" in text and "| **40.00** |" in text
  assert "Convergence not recorded for" in text
  assert "_Robust ARP against passes per image as the candidates accumulate skipped: no robust " \
         "records with a trajectory at ε=8._" in text


def test_other_suite_says_so_and_its_gap_to_thorough(tmp_path):
  smoke = [robust_record("as", 30.0, "smoke"), robust_record("mid", 45.0, "smoke")]
  thorough = [robust_record("as", 41.0, "thorough"), robust_record("mid", 48.0, "thorough")]
  grid = make_records(at=False)
  text = report.write_report(grid + thorough + smoke, tmp_path, robust_suite="smoke").read_text()
  assert ("### Robust evaluation: leaderboard, ε=8, suite `smoke` (not a reference suite: "
          "standard, thorough)") in text
  assert "`thorough` finds +7.00 ARP points more on the same 2 models at ε=8 (max +11.00)" in text
  assert "| **30.00** |" in text and "| **41.00** |" not in text  # the smoke records are shown
  alone = report.write_report(grid + smoke, tmp_path / "alone").read_text()
  assert "its gap to `thorough` is not measured on these models at ε=8" in alone
  shown = report.write_report(grid + smoke + thorough, tmp_path / "t").read_text()
  assert "suite `thorough`\n" in shown and "not a reference suite" not in shown
  assert re.search(r"\| \*\*41.00\*\* \|", shown)
