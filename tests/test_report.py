"""Tests of mtajax.report on synthetic records with known ARPs."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from mtajax import report
from mtajax import tasks as tasks_lib
from mtajax.report import records as rec_lib
from mtajax.report import tables
from mtajax.report.findings import rank_correlation

from fixtures import SHARED, TASKS, make_records, record, rows, share


def test_default_eps():
  assert rec_lib.default_eps(make_records(eps_grid=(4, 8, 16))) == 8
  assert rec_lib.default_eps(make_records(eps_grid=(2, 6))) == 6
  assert rec_lib.default_eps(make_records(eps_grid=(12, 16))) == 12


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


def test_transfer_attack_defaults_to_apgd_then_pgd():
  assert rec_lib.transfer_attack(make_records(), 8) == "apgd"
  assert rec_lib.transfer_attack(make_records(attacks=("pgd",)), 8) == "pgd"
  with pytest.raises(rec_lib.MissingData):
    rec_lib.transfer_attack(make_records(directions=("total",)), 8)


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


def test_findings_gbmta_wins_on_some_models_and_loses_on_as():
  text = report.findings(make_records())
  assert "vs Total: GB-MTA higher in 6, tied in 0, lower in 0 of 6" in text
  assert "vs the best Single-x: GB-MTA higher in 4, tied in 0, lower in 2 of 6" in text
  assert "holds in most pairs but not all" in text
  assert "- as (AS): PGD → Single-Segm = Single-Norm = Single-Dept (44.00)" in text
  assert "- 41: PGD → GB-MTA (40.00); APGD → GB-MTA (44.00)" in text


def test_findings_gbmta_loses_everywhere():
  weak = dict(SHARED, gbmta=[10.0, 10.0, 10.0])
  text = report.findings(make_records(shared=weak, at=False))
  assert "vs Total: GB-MTA higher in 0, tied in 0, lower in 6 of 6" in text
  assert "does not hold in most pairs" in text
  assert "adversarially trained" not in text


def test_findings_transfer_sign_follows_numbers():
  up = report.findings(make_records())
  assert "mean over attacked tasks: ρ = +1.00: grows with sharing" in up
  assert "Caveat: only 3 distinct sharing levels" in up
  assert "(mean 0.10 at 0L, 0.60 at 5L)" in up
  down = report.findings(make_records(share_fn=lambda level: 0.7 - 0.1 * level))
  assert "ρ = -1.00: falls with sharing, unlike the paper" in down


def test_rank_correlation_matches_numpy_ranks():
  x, y = [0, 1, 2, 3, 5], [0.3, 0.1, 0.4, 0.9, 0.8]
  rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
  assert rank_correlation(x, y) == pytest.approx(np.corrcoef(rx, ry)[0, 1])
  assert rank_correlation([1, 2, 3], [1, 1, 1]) is None


def test_findings_adversarial_training_drop():
  text = report.findings(make_records())
  assert "- 41 [FAT GB-MTA ε=8]: PGD GB-MTA ARP dropped, 40.00 (w/o AT) → 12.00" in text
  assert "adversarially trained models** (ε=8" in text


def test_figure_data_match_numpy():
  recs = make_records()
  fig2 = report.figure_arp_vs_eps(recs)
  pgd_ax = fig2.axes[0]
  gbmta_line = [l for l in pgd_ax.lines if l.get_label() == "GB-MTA"][0]
  np.testing.assert_allclose(gbmta_line.get_xdata(), [4, 8, 16])
  np.testing.assert_allclose(gbmta_line.get_ydata(), [20, 40, 80])  # all models share GB-MTA
  single = [l for l in pgd_ax.lines if l.get_label() == "Single-Segm"][0]
  mean_at_8 = np.mean([(60 + 120 * share(level)) / 3 for level in (5, 2, 0)])
  assert single.get_ydata()[1] == pytest.approx(mean_at_8)
  fig4 = report.figure_transfer(recs)
  line = fig4.axes[0].lines[0]
  np.testing.assert_allclose(line.get_xdata(), [0, 2, 5])
  np.testing.assert_allclose(line.get_ydata(), [share(0), share(2), share(5)])


def _is_png(path) -> bool:
  return path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _examples():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
  perturbed = {e: np.clip(image + rng.integers(-e, e + 1, image.shape), 0, 255).astype(np.uint8)
               for e in (4, 8)}
  preds = {"segment_semantic": rng.normal(size=(16, 16, 5)),
           "normal": rng.normal(size=(16, 16, 3)), "depth_zbuffer": rng.random((16, 16, 1))}
  return dict(image_rgb=image, perturbed=perturbed, preds_clean=preds,
              preds_adv={k: -v for k, v in preds.items()}, tasks=list(TASKS))


def test_write_report_full(tmp_path):
  path = report.write_report(make_records(), tmp_path / "out", examples=_examples())
  text = path.read_text()
  for heading in ("### Findings", "### Table 1/2 layout", "### Table 3 layout", "### Table 12",
                  "### Per-task ARP", "Fig. 6"):
    assert heading in text
  assert "_Skipped" not in text and "skipped" not in text
  links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
  assert len(links) == 4
  for link in links:
    assert _is_png(path.parent / link)
  assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith(".")) == []


def test_write_report_missing_parts(tmp_path):
  recs = make_records(models=("mid",), attacks=("pgd",), eps_grid=(8,),
                      directions=("total", "gbmta"), at=False)
  path = report.write_report(recs, tmp_path)
  text = path.read_text()
  assert "Table 3" not in text
  assert "_Skipped: it needs clean-trained models at ≥ 2 sharing levels, found 1._" in text
  assert "Transferability: not assessed (no Single-x records at ε=8)." in text
  assert "| 41 | 2L | 33.33 | **40.00** |" in text
  assert _is_png(tmp_path / "synthetic-small-segm-norm-dept_fig1_per_task.png")
  only_clean = [r for r in recs if r["attack"] == "clean"]
  assert "No attacked records" in report.write_report(only_clean, tmp_path / "c").read_text()
  assert "No records yet" in report.write_report([], tmp_path / "e").read_text()
  at_only = make_records(models=(), at=True)  # AT records whose w/o-AT model is missing
  text = report.write_report(at_only, tmp_path / "a").read_text()
  assert "no clean-trained model with the adversarially trained models' layout" in text


def test_figure_examples_rejects_bad_input(tmp_path):
  report.save_png(report.figure_examples(**_examples()), tmp_path / "f.png")
  assert _is_png(tmp_path / "f.png")
  bad = _examples()
  bad["image_rgb"] = bad["image_rgb"].astype(np.float32)
  with pytest.raises(ValueError, match="uint8"):
    report.figure_examples(**bad)
  bad = _examples()
  bad["preds_adv"]["normal"] = np.full((16, 16, 3), np.nan)
  with pytest.raises(ValueError, match="finite"):
    report.figure_examples(**bad)
  with pytest.raises(ValueError, match="adv_eps"):
    report.figure_examples(**_examples(), adv_eps=2)


def test_load_and_check(tmp_path):
  recs = make_records(models=("mid",), eps_grid=(8,), at=False)
  path = tmp_path / "results.jsonl"
  path.write_text("\n".join(json.dumps(r) for r in recs) + "\n\n")
  assert report.load(path) == recs
  path.write_text(json.dumps(recs[0]) + "\n{oops\n")
  with pytest.raises(ValueError, match=r"results.jsonl:2"):
    report.load(path)
  nan = dict(recs[1], arp=float("nan"))
  with pytest.raises(ValueError, match="finite"):
    report.check([nan])
  with pytest.raises(ValueError, match="unknown attack"):
    report.check([dict(recs[1], attack="cw")])
  with pytest.raises(ValueError, match="direction"):
    report.check([dict(recs[1], direction="single_keypoints2d")])


def test_write_report_one_section_per_group(tmp_path):
  recs = make_records(at=False)
  other = [dict(r, dataset="nyuv2", key="n" + r["key"]) for r in recs if r["model"] != "ind"]
  text = report.write_report(recs + other, tmp_path).read_text()
  assert "## synthetic / small / Segm, Norm, Dept" in text
  assert "## nyuv2 / small / Segm, Norm, Dept" in text
  assert text.count("### Table 1/2 layout") == 2
  for prefix in ("synthetic", "nyuv2"):
    assert _is_png(tmp_path / f"{prefix}-small-segm-norm-dept_fig4_transfer.png")


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
