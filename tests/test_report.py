"""write_report (mtajax/report/__init__.py) on synthetic records with known ARPs: the whole
Markdown report, its figures and the notes that replace what the records cannot support."""

from __future__ import annotations

import re

from mtajax import report

from fixtures import example_arrays, is_png, make_records


def test_write_report_full(tmp_path):
  path = report.write_report(make_records(), tmp_path / "out", examples=example_arrays())
  text = path.read_text()
  for heading in ("### Findings", "### Table 1/2 layout", "### Table 3 layout", "### Table 12",
                  "### Per-task ARP", "Fig. 6"):
    assert heading in text
  assert "_Skipped" not in text and "skipped" not in text
  links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
  assert len(links) == 4
  for link in links:
    assert is_png(path.parent / link)
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
  assert is_png(tmp_path / "synthetic-small-segm-norm-dept_fig1_per_task.png")
  only_clean = [r for r in recs if r["attack"] == "clean"]
  assert "No attacked records" in report.write_report(only_clean, tmp_path / "c").read_text()
  assert "No records yet" in report.write_report([], tmp_path / "e").read_text()
  at_only = make_records(models=(), at=True)  # AT records whose w/o-AT model is missing
  text = report.write_report(at_only, tmp_path / "a").read_text()
  assert "no clean-trained model with the adversarially trained models' layout" in text


def test_write_report_one_section_per_group(tmp_path):
  recs = make_records(at=False)
  other = [dict(r, dataset="nyuv2", key="n" + r["key"]) for r in recs if r["model"] != "ind"]
  text = report.write_report(recs + other, tmp_path).read_text()
  assert "## synthetic / small / Segm, Norm, Dept" in text
  assert "## nyuv2 / small / Segm, Norm, Dept" in text
  assert text.count("### Table 1/2 layout") == 2
  for prefix in ("synthetic", "nyuv2"):
    assert is_png(tmp_path / f"{prefix}-small-segm-norm-dept_fig4_transfer.png")
