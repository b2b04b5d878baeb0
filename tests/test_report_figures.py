"""mtajax.report.figures: the figures' data against NumPy, and bad example inputs."""

from __future__ import annotations

import numpy as np
import pytest

from mtajax import report

from fixtures import example_arrays, is_png, make_records, share


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


def test_figure_examples_rejects_bad_input(tmp_path):
  report.save_png(report.figure_examples(**example_arrays()), tmp_path / "f.png")
  assert is_png(tmp_path / "f.png")
  bad = example_arrays()
  bad["image_rgb"] = bad["image_rgb"].astype(np.float32)
  with pytest.raises(ValueError, match="uint8"):
    report.figure_examples(**bad)
  bad = example_arrays()
  bad["preds_adv"]["normal"] = np.full((16, 16, 3), np.nan)
  with pytest.raises(ValueError, match="finite"):
    report.figure_examples(**bad)
  with pytest.raises(ValueError, match="adv_eps"):
    report.figure_examples(**example_arrays(), adv_eps=2)
