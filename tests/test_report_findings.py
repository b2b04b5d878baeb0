"""mtajax.report.findings on synthetic records with known ARPs: the computed findings' text."""

from __future__ import annotations

import numpy as np
import pytest

from mtajax import report
from mtajax.report.findings import rank_correlation

from fixtures import SHARED, make_records


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
