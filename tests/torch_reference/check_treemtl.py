"""Checks the transcription in ``treemtl.py`` against a clone of TreeMTL (needs torch, networkx).

    git clone https://github.com/zhanglijun95/TreeMTL /tmp/TreeMTL
    git -C /tmp/TreeMTL checkout 70d26aafb60031d267812b3a9bb4c4bde87e01a4
    python tests/torch_reference/check_treemtl.py /tmp/TreeMTL [--write-keys]

For AS, IND and layout 5 of both backbones it builds TreeMTL's ``Deeplab_ASPP_Layout`` and
``MTSeqModel`` and the transcription, compares the ``state_dict`` key names, their order and the
shapes, loads TreeMTL's random weights into the transcription and compares the eval outputs of
every head. ``--write-keys`` (re)writes ``keys_layout5.json.gz``: TreeMTL's key names and shapes
for layout 5, which the tests that run without torch check the conversion against. TreeMTL's
``proto/pytorch_pb2.py`` predates protobuf 4, so the script selects
protobuf's pure-Python implementation and gives it the container name TreeMTL tests for.
"""

from __future__ import annotations

import gzip
import json
import os
import pathlib
import sys
import types


def _import_treemtl(root: str):
  os.environ["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = "python"
  from google.protobuf.internal import containers  # pylint: disable=g-import-not-at-top
  message = types.ModuleType("google.protobuf.pyext._message")
  message.RepeatedScalarContainer = containers.RepeatedScalarFieldContainer
  sys.modules["google.protobuf.pyext._message"] = message
  import google.protobuf.pyext as pyext  # pylint: disable=g-import-not-at-top
  pyext._message = message  # pylint: disable=protected-access
  sys.path.insert(0, root)
  from main import auto_models, layout, models  # pylint: disable=g-import-not-at-top
  return auto_models.MTSeqModel, models.Deeplab_ASPP_Layout, layout.Layout


def main(root: str, write_keys: bool) -> None:
  import torch  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
  from mtajax import models  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
  import treemtl  # pylint: disable=g-import-not-at-top

  real_seq, real_deeplab, real_layout = _import_treemtl(root)
  cls_num = {"segment_semantic": 5, "normal": 3, "depth_zbuffer": 1}
  x = torch.randn(2, 3, 33, 41) * 50
  keys = {}
  for backbone, classes in (("resnet34", ("Deeplab_ASPP_Layout", "MTSeqModel")),
                            ("mobilenetv2", ("MTSeqModel",))):
    prototxt = {"resnet34": "deeplab_resnet34_adashare", "mobilenetv2": "mobilenetv2"}[backbone]
    for idx in (0, 2, 5):
      fine = models.fine_layout(backbone, idx, 3)
      state = [[set(s) for s in block] for block in fine.blocks]
      lay = real_layout(3, fine.num_blocks, state)
      for cls in classes:
        if cls == "MTSeqModel":
          real = real_seq(f"{root}/models/{prototxt}.prototxt", layout=lay,
                          feature_dim=512 if backbone == "resnet34" else 1280, cls_num=cls_num,
                          verbose=False)
          mine = treemtl.MTSeqModel(prototxt, state, cls_num)
        else:
          real = real_deeplab(lay, cls_num)
          mine = treemtl.Deeplab_ASPP_Layout(state, cls_num)
        want, got = real.state_dict(), mine.state_dict()
        assert list(want) == list(got), (backbone, cls, idx, set(want) ^ set(got))
        assert all(want[k].shape == got[k].shape for k in want), (backbone, cls, idx)
        if idx == 5:
          keys[f"{backbone}/{cls}"] = [[k, list(v.shape)] for k, v in want.items()]
        treemtl.randomize(real, idx)
        mine.load_state_dict(real.state_dict())
        mine.eval()
        with torch.no_grad():
          a, b = real(x), mine(x)
        err = max(float((a[t] - b[t]).abs().max() / a[t].abs().max()) for t in cls_num)
        assert err < 1e-6, (backbone, cls, idx, err)
        print(f"{backbone} {cls} layout {idx}: {len(want)} keys identical, max rel. diff {err:.1e}")
  if write_keys:
    path = pathlib.Path(__file__).with_name("keys_layout5.json.gz")
    path.write_bytes(gzip.compress(json.dumps(keys, indent=0).encode(), mtime=0))


if __name__ == "__main__":
  main(sys.argv[1], "--write-keys" in sys.argv[2:])
