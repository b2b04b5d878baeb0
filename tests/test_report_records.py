"""mtajax.report.records: loading and checking result records, the default ε and transfer attack."""

from __future__ import annotations

import json

import pytest

from mtajax import report
from mtajax.report import records as rec_lib

from fixtures import make_records


def test_default_eps():
  assert rec_lib.default_eps(make_records(eps_grid=(4, 8, 16))) == 8
  assert rec_lib.default_eps(make_records(eps_grid=(2, 6))) == 6
  assert rec_lib.default_eps(make_records(eps_grid=(12, 16))) == 12


def test_transfer_attack_defaults_to_apgd_then_pgd():
  assert rec_lib.transfer_attack(make_records(), 8) == "apgd"
  assert rec_lib.transfer_attack(make_records(attacks=("pgd",)), 8) == "pgd"
  with pytest.raises(rec_lib.MissingData):
    rec_lib.transfer_attack(make_records(directions=("total",)), 8)


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
