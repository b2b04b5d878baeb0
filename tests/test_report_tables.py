"""mtajax.report.tables on synthetic records with known ARPs: the paper-style Markdown tables."""

from __future__ import annotations

import numpy as np
import pytest

from mtajax import report
from mtajax import tasks as tasks_lib
from mtajax.report import records as rec_lib
from mtajax.report import tables

from fixtures import TASKS, make_records, record, rows, share


def test_arp_table_values_order_and_bold():
  table = rows(tables.arp_table(make_records()))
  header = table["header"]
  assert header[:5] == ["Model", "Sharing", "PGD Segm", "PGD Norm", "PGD Dept"]
  assert header[5:8] == ["PGD Total", "PGD SignTotal", "PGD GB-MTA"]
  assert header[8] == "APGD Segm" and len(header) == 14
  assert list(table)[1:] == ["as (AS)", "41", "ind (IND)"]  # sharing level high -> low
  mid = table["41"]
  assert mid[1] == "2L"
  # Single-x at level 2: (60 + 2 * 60 * 0.3) / 3 = 32; GB-MTA 40 is the best PGD direction.
  assert mid[2:8] == ["32.00", "32.00", "32.00", "33.33", "33.33", "**40.00**"]
  assert mid[13] == "**44.00**"  # APGD GB-MTA = 1.1 * 40
  # AS: every Single-x (60 + 2 * 36) / 3 = 44 ties for the best and all three are bold.
  assert table["as (AS)"][2:5] == ["**44.00**"] * 3 and table["as (AS)"][7] == "40.00"


def test_arp_table_only_present_columns_and_missing_cells():
  recs = [r for r in make_records() if not (r["attack"] == "apgd" and r["direction"] ==
                                            "sign_total")]
  recs = [r for r in recs if not (r["model"] == "ind" and r["direction"] == "total")]
  table = rows(tables.arp_table(recs, eps=4))
  assert "APGD SignTotal" not in table["header"] and "PGD SignTotal" in table["header"]
  assert table["ind (IND)"][table["header"].index("PGD Total")] == "–"
  assert table["41"][table["header"].index("PGD GB-MTA")] == "**20.00**"  # ε=4 halves it


def test_transferability_matches_eq11():
  recs = make_records()
  values = tables.transferabilities(recs, "apgd", 8)
  for rec in rec_lib.select(recs, attack="apgd", eps=8, adv_training="none"):
    task = rec_lib.single_task(rec["direction"])
    if task:
      expected = tasks_lib.transferability(rec["arp_per_task"], task)
      assert values[rec["model"]][task] == pytest.approx(expected)
      assert expected == pytest.approx(share(rec["sharing_level"]))
  table = rows(tables.transfer_table(recs))
  assert table["header"][2:] == ["Single-Segm", "Single-Norm", "Single-Dept"]
  assert table["as (AS)"][1:] == ["5L", "0.60", "0.60", "0.60"]
  assert table["ind (IND)"][2:] == ["0.10"] * 3


def test_at_table():
  table = rows(tables.at_table(make_records()))
  assert table["header"] == ["Adv. Train", "Single-Segm", "Single-Norm", "Single-Dept", "Total",
                             "SignTotal", "GB-MTA"]
  assert table["w/o AT"][1:] == ["32.00"] * 3 + ["33.33", "33.33", "**40.00**"]
  assert table["FAT GB-MTA ε=8"][1:] == ["9.60"] * 3 + ["10.00", "10.00", "**12.00**"]


def test_per_task_table():
  table = rows(tables.per_task_table(make_records(), model="mid", attack="pgd"))
  assert table["header"] == ["Direction", "ARP-Segm", "ARP-Norm", "ARP-Dept", "ARP"]
  assert table["Single-Segm"][1:] == ["**60.00**", "18.00", "18.00", "32.00"]
  assert table["GB-MTA"][1:] == ["45.00", "40.00", "35.00", "**40.00**"]  # Single-x owns its task


PAPER_TABLE12 = {  # sharing level: Single-Segm, Single-Norm, Single-Dept (APGD, NYUv2)
    5: (0.46, 0.53, 0.15), 4: (0.26, 0.45, 0.15), 3: (0.22, 0.33, 0.12),
    2: (0.16, 0.28, 0.09), 1: (0.12, 0.31, 0.08), 0: (0.02, 0.17, 0.1)}


def _average_ranks(v):
  v = np.asarray(v, float)
  return np.array([np.mean(np.flatnonzero(np.sort(v) == x)) for x in v])


def test_paper_table12_numbers_reproduced_with_spearman_signs():
  recs = []
  for level, trs in PAPER_TABLE12.items():
    layout = str([[{0, 1, 2}]] * level + [[{0}, {1}, {2}]] * (5 - level))
    for task, tr in zip(TASKS, trs):
      arps = {t: 100.0 if t == task else 100.0 * tr for t in TASKS}
      recs.append(dict(record("mid", "apgd", f"single_{task}", 8), model=f"L{level}",
                       key=f"L{level}{task}", layout=layout, sharing_level=level,
                       layout_idx=None, arp_per_task=arps, arp=float(np.mean(list(arps.values())))))
  table = rows(tables.transfer_table(recs))
  for level, trs in PAPER_TABLE12.items():
    label = "L5 (AS)" if level == 5 else "L0 (IND)" if level == 0 else f"L{level}"
    assert table[label][1:] == [f"{level}L"] + [f"{v:.2f}" for v in trs]
  text = report.findings(recs)
  levels = list(PAPER_TABLE12)
  for i, task in enumerate(TASKS):
    values = [PAPER_TABLE12[lvl][i] for lvl in levels]
    rho = np.corrcoef(_average_ranks(levels), _average_ranks(values))[0, 1]
    assert f"{rec_lib.direction_label('single_' + task)}: ρ = {rho:+.2f}: grows with sharing" in text
  assert "Caveat" not in text  # six distinct levels


def test_clean_table_shows_each_models_clean_metrics():
  from mtajax.report import tables  # pylint: disable=g-import-not-at-top
  recs = make_records(at=False)
  for i, r in enumerate(x for x in recs if x["attack"] == "clean"):
    r["metrics"] = {t: {"m": 0.25 * i + 0.5} for t in TASKS}
    r["train_steps"] = 100 + i
  table = rows(tables.clean_table(recs))
  del table["header"]
  assert len(table) == 3
  values = {r["model"]: r for r in recs if r["attack"] == "clean"}
  for cells in table.values():
    model = next(m for m, r in values.items() if r["train_steps"] == int(cells[2]))
    assert cells[3:] == [f"{values[model]['metrics'][t]['m']:.2f}" for t in TASKS]
  for r in recs:
    r["metrics"] = {}
  with pytest.raises(ValueError, match="no metrics"):
    tables.clean_table(recs)
