"""mtajax.models.torch_pickle: the restricted pickle loader for PyTorch checkpoints, without torch.

On files written by ``torch.save`` (``torch_reference/tiny_checkpoint.model``,
``loader_tensors.pth``, read as ``torch.load`` read it in ``loader_tensors.npz``) and on crafted
pickles: nothing a pickle references outside the allow-list runs, errors are one line, and the NumPy
path never imports torch.
"""

import os
import pathlib
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from mtajax import models
from mtajax.models import torch_pickle
from torch_reference import make_goldens

HERE = pathlib.Path(__file__).resolve().parent
REFERENCE = HERE / "torch_reference"
ROOT = HERE.parent
TASKS = make_goldens.TASKS


def test_loader_reads_a_treemtl_checkpoint_written_by_torch():
  ckpt = torch_pickle.load(REFERENCE / "tiny_checkpoint.model")
  sd = ckpt["state_dict"]
  assert list(sd) == ["conv.weight", "conv.bias", "bn.num_batches_tracked", "view", "view2",
                      "half", "mask"]
  np.testing.assert_array_equal(sd["conv.weight"],
                                np.arange(54, dtype=np.float32).reshape(3, 2, 3, 3) / 10)
  np.testing.assert_array_equal(sd["conv.bias"], [-1.0, 0.5, 2.0])
  assert sd["bn.num_batches_tracked"].dtype == np.int64 and sd["bn.num_batches_tracked"] == 7
  np.testing.assert_array_equal(sd["view"], [1.0, 4.0, 7.0])  # offset 1, stride 3
  np.testing.assert_array_equal(sd["view2"], np.arange(10.0).reshape(2, 5).T)  # transposed view
  assert sd["half"].dtype == np.float16 and sd["mask"].dtype == np.bool_
  assert ckpt["iter"] == 20000 and ckpt["scheduler"]["step_size"] == 4000
  assert isinstance(ckpt["layout"], torch_pickle.PickledLayout)
  assert ckpt["layout"].state == [[{0, 1}], [{0}, {1}]]
  assert set(ckpt["optimizer"]["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
  read = models.read_checkpoint(REFERENCE / "tiny_checkpoint.model")
  assert read.layout == models.Layout([[{0, 1}], [{0}, {1}]]) and "view" in read.state_dict


class _RunsCode:
  """Unpickling this calls os.system (or exec) with a command that creates ``marker``."""

  def __init__(self, marker: pathlib.Path, how: str):
    self.marker, self.how = marker, how

  def __reduce__(self):
    if self.how == "system":
      return os.system, (f"touch {self.marker}",)
    return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def _torch_like_zip(path: pathlib.Path, payload) -> pathlib.Path:
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", pickle.dumps(payload, protocol=2))
    z.writestr("archive/byteorder", "little")
  return path


@pytest.mark.parametrize("how", ["system", "exec"])
def test_crafted_pickle_is_refused_and_nothing_runs(tmp_path, how):
  marker = tmp_path / "pwned"
  evil = _torch_like_zip(tmp_path / "evil.pth", {"state_dict": {"w": _RunsCode(marker, how)}})
  for load in (torch_pickle.load, lambda p: models.from_torch(p, "resnet34", TASKS, 0)):
    with pytest.raises(ValueError, match=r"Refusing to load .*evil.pth: it references "
                       r"(posix\.system|__builtin__\.exec)") as e:
      load(evil)
    assert "\n" not in str(e.value)
  plain = tmp_path / "plain.pkl"
  plain.write_bytes(pickle.dumps(_RunsCode(marker, how)))
  with pytest.raises(ValueError, match="not a zip-format PyTorch file"):
    torch_pickle.load(plain)
  assert not marker.exists()


def test_loader_errors_are_one_line(tmp_path):
  with pytest.raises(ValueError, match="No PyTorch checkpoint at"):
    torch_pickle.load(tmp_path / "missing.pth")
  with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
    z.writestr("a.txt", "x")
  with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
    torch_pickle.load(tmp_path / "other.zip")
  # A tensor storage of 4 floats: ('storage', torch.FloatStorage, '0', 'cpu', 4), hand-assembled.
  pid = (b"\x80\x02(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000"
         b"X\x03\x00\x00\x00cpuK\x04tQ.")
  for name, data, message in (("absent.pth", None, "storage 0 is missing"),
                              ("short.pth", np.zeros(2, "<f4").tobytes(), "holds 2 of 4 values")):
    with zipfile.ZipFile(tmp_path / name, "w") as z:
      z.writestr("archive/data.pkl", pid)
      if data is not None:
        z.writestr("archive/data/0", data)
    with pytest.raises(ValueError, match=message):
      torch_pickle.load(tmp_path / name)


def test_numpy_path_does_not_import_torch():
  code = ("import sys, mtajax.models as m; "
          f"c = m.read_checkpoint({str(REFERENCE / 'tiny_checkpoint.model')!r}); "
          "assert c.layout is not None; assert 'torch' not in sys.modules, 'torch imported'")
  done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                        env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
  assert done.returncode == 0, done.stderr[-1000:]


def test_loader_agrees_with_torch_load():
  """``loader_tensors.pth`` (torch.save) read as torch.load read it (``loader_tensors.npz``)."""
  ours = torch_pickle.load(REFERENCE / "loader_tensors.pth")
  with np.load(REFERENCE / "loader_tensors.npz") as theirs:
    assert list(ours) == theirs.files == ["a", "b", "c", "d", "e"]
    for k in theirs.files:
      want = theirs[k]
      np.testing.assert_array_equal(np.asarray(ours[k], want.dtype), want, err_msg=k)
      assert ours[k].shape == want.shape, k
