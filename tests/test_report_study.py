"""The directions × attack-losses report section on synthetic records with known ARPs."""

from __future__ import annotations

import numpy as np

from mtajax import report
from mtajax.report import study

import fixtures as tr  # the synthetic-record helpers of the report tests

# Mean ARP of a (direction, loss) on model m: BASE[direction] + LOSS[loss] + MODEL[m].
BASE = {"total": 10.0, "gbmta": 20.0, "mgda": 25.0, "cagrad": 15.0}
LOSS = {"default": 0.0, "segpgd": 4.0, "cospgd": -2.0}
MODEL = {"as": 0.0, "mid": 3.0, "ind": 6.0}


def study_records():
  out = []
  for model in MODEL:
    out.append(tr.record(model, "clean", None, 0))
    for attack in ("pgd", "apgd"):
      for direction, base in BASE.items():
        for loss, bonus in LOSS.items():
          rec = tr.record(model, attack, "total", 8)
          value = base + bonus + MODEL[model] + (1.0 if attack == "apgd" else 0.0)
          rec.update(direction=direction, attack_loss=loss, arp=value,
                     arp_per_task={t: value for t in tr.TASKS},
                     key=f"{model}|{attack}|{direction}|{loss}")
          if loss == "default":
            rec.pop("attack_loss")  # older records have no field: the default loss
          out.append(rec)
  return out


def test_table_means_and_bold():
  rows = tr.rows(study.directions_table(study_records(), 8))
  header = rows["header"]
  assert header[:2] == ["Direction", "Attack loss"] and "PGD mean" in header
  # rows are keyed by the first cell (direction label); pick MGDA + segpgd explicitly
  table = study.directions_table(study_records(), 8)
  line = next(l for l in table.splitlines() if l.startswith("| MGDA | segpgd"))
  cells = [c.strip() for c in line.strip("|").split("|")]
  mean = cells[header.index("PGD mean")]
  assert mean == "**32.00**"  # 25 + 4 + mean(0, 3, 6), the strongest of the column
  assert cells[header.index("APGD mean")] == "**33.00**"


def test_findings_say_what_the_numbers_say():
  text = study.findings(study_records(), 8)
  assert "PGD, ε=8: strongest is MGDA with the segpgd loss, mean ARP 32.00%" in text
  assert "GB-MTA (best loss) is beaten against the balancers: 27.00% vs MGDA 32.00%" in text
  assert "the segpgd loss is strongest" in text
  assert "GB-MTA (training loss) is beaten against the balancers: 23.00% vs MGDA 28.00%" in text
  better = [r for r in study_records() if r["direction"] != "mgda"]
  assert "still the strongest" in study.findings(better, 8)


def test_report_section_and_default_only_paper_tables(tmp_path):
  records = study_records()
  path = report.write_report(records, tmp_path)
  text = path.read_text()
  assert "### Directions × attack losses, ε=8" in text
  assert (tmp_path / "synthetic-small-segm-norm-dept_directions_losses.png").stat().st_size > 0
  # The paper-layout table shows the default loss only: Total on AS = 10 + 0 + 0.
  section = text.split("### Table 1/2 layout")[1].split("###")[0]
  # (Total, GB-MTA, CAGrad, MGDA) per attack, not the segpgd values 14, 24, ...
  assert "| as (AS) | 5L | 10.00 | 20.00 | 15.00 | **25.00** | 11.00 | 21.00 |" in section
  fig = study.figure_directions(records, 8)
  assert len(fig.axes) == 2
  heights = [p.get_height() for p in fig.axes[0].patches]
  np.testing.assert_allclose(sorted(heights)[-1], 32.0)
