"""The Colab notebooks run top to bottom on CPU in the smoke setting and are committed stripped."""

import os
import pathlib
import re
import shutil

import nbformat
from nbclient import NotebookClient
import pytest

from configs import quickstart

from fixtures import SMOKE_MODEL

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ("quickstart.ipynb", "reproduce_paper.ipynb")


def _read(name: str) -> nbformat.NotebookNode:
  return nbformat.read(ROOT / "colab" / name, as_version=4)


def _text(cell: nbformat.NotebookNode) -> str:
  return "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                 for o in cell.outputs)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_committed_without_outputs(name):
  nb = _read(name)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert code, "no code cells"
  for cell in code:
    assert cell.outputs == [] and cell.execution_count is None, f"outputs left in {cell.id}"
    assert "execution" not in cell.metadata, f"execution timings left in {cell.id}"
  assert "widgets" not in nb.metadata
  assert "google.colab" in code[0].source and "REPO_URL" in code[0].source, "no install cell"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_smoke_setting(name, tmp_path, monkeypatch, smoke_sweep):
  if name == "quickstart.ipynb":  # Its one model is the session's smoke model: a copy, not trained
    # again (reproduce_paper.ipynb trains its two in the kernel).
    config = quickstart.get_config("smoke")  # The notebook's paths, relative to its folder.
    shutil.copytree(smoke_sweep / "tfds", tmp_path / config.train.data_dir)
    shutil.copytree(smoke_sweep / "work" / "models" / SMOKE_MODEL,
                    tmp_path / config.workdir / "models" / SMOKE_MODEL)
  monkeypatch.setenv("MTAJAX_SMOKE", "1")
  monkeypatch.setenv("MTAJAX_JAX_CACHE", str(ROOT / ".jax_cache"))  # shared with the other tests
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
  nb = _read(name)
  NotebookClient(nb, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path)}}).execute()  # raises on any error
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert "on CPU" in _text(code[1]) and "[smoke setting]" in _text(code[1])
  images = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
  late_import = [c.id for c in code for o in c.outputs if "RuntimeWarning" in o.get("text", "")]
  assert not late_import, f"JAX started before mtajax was imported (cells {late_import})"
  reports = list(tmp_path.glob("runs/*/report/report.md"))
  assert len(reports) == 1, reports
  text = reports[0].read_text()
  if name == "quickstart.ipynb":
    assert len(images) >= 2  # the per-task ARP chart and Fig. 6, from mtajax.report
    printed = "".join(_text(c) for c in code)
    for direction in ("single_segment_semantic", "single_normal", "single_depth_zbuffer",
                      "total", "sign_total", "gbmta"):
      assert re.search(rf"^{direction} +ARP +-?\d+\.\d\d ", printed, re.M), direction
    assert not re.search(r"\bnan\b", printed, re.I), "NaN in the printed results"
    assert "GB-MTA" in text
  else:
    assert len(images) >= 3  # Fig. 6, the per-task ARP chart and the ε curves
    assert "| 0 (AS) | 5L |" in text and "| 2 (IND) | 0L |" in text  # Table 1/2 rows with ARPs
    assert "fig2_arp_vs_eps.png" in text
