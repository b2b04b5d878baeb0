"""Writes the golden files of the PyTorch equivalence tests (needs torch; the tests do not).

    pip install torch  # any build; the CPU one suffices
    python tests/torch_reference/make_goldens.py

For every case of ``CASES`` it builds the transcription (``treemtl.py``), loads the weights of
:func:`seeded_state_dict` (NumPy-seeded, so the tests rebuild them without torch), and runs the
eval forward pass on :func:`inputs`; where the case has a gradient also the float64 input gradient
of ``sum_t <output_t, cotangent_t>``. It writes, next to this file:

* ``goldens.npz``: per case ``<case>/x`` (float32 NHWC input), ``<case>/<task>`` (float32 NHWC
  outputs), ``<case>/sums`` (float64 sum of every state_dict entry, to tell a changed NumPy
  random stream from a conversion fault) and, with a gradient, ``<case>/cotangent/<task>`` and
  ``<case>/grad`` (float64);
* ``golden_keys.json.gz``: per case the state_dict key names and shapes, in order;
* ``deeplab_layout5.pth``: ``torch.save({'iter', 'state_dict'})`` of the ResNet34
  ``Deeplab_ASPP_Layout`` of layout 5, every tensor a stride-0 view of one value per key
  (:func:`constant_value`), so the file is small but is a real checkpoint of the full model;
* ``loader_tensors.pth`` (``torch.save`` of strided, bfloat16, 0-d, permuted and bool tensors) and
  ``loader_tensors.npz`` (what ``torch.load`` reads from it).
"""

from __future__ import annotations

import collections
import gzip
import json
import pathlib
import sys
from collections.abc import Sequence

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
TASKS = {"segment_semantic": 5, "normal": 3, "depth_zbuffer": 1}
PROTOTXT = {"resnet34": "deeplab_resnet34_adashare", "mobilenetv2": "mobilenetv2"}
# (backbone, model class, layout index, input gradient): the layout index is also the seed.
CASES = (("resnet34", "Deeplab_ASPP_Layout", 0, False),
         ("resnet34", "Deeplab_ASPP_Layout", 2, False),
         ("resnet34", "Deeplab_ASPP_Layout", 5, True), ("resnet34", "MTSeqModel", 5, True),
         ("mobilenetv2", "MTSeqModel", 0, False), ("mobilenetv2", "MTSeqModel", 2, False),
         ("mobilenetv2", "MTSeqModel", 5, False))
KeyShapes = Sequence[tuple[str, Sequence[int]]]


def case_name(backbone: str, model_class: str, layout_idx: int) -> str:
  return f"{backbone}/{model_class}/{layout_idx}"


def seeded_state_dict(key_shapes: KeyShapes, seed: int) -> dict[str, np.ndarray]:
  """Weights from ``np.random.default_rng(seed)``, drawn key by key in state_dict order.

  Convs: N(0, 1/fan_in) kernels, N(0, 0.1²) biases; BatchNorm: scale U(0.5, 1.5), bias and running
  mean N(0, 0.2²), running variance U(0.5, 2), ``num_batches_tracked`` in [1, 10⁶) (int64).
  """
  rng = np.random.default_rng(seed)
  batchnorms = {k.rsplit(".", 1)[0] for k, _ in key_shapes if k.endswith(".running_var")}
  state = {}
  for key, shape in key_shapes:
    module, name = key.rsplit(".", 1)
    shape = tuple(shape)
    if name == "num_batches_tracked":
      state[key] = np.asarray(rng.integers(1, 10**6), np.int64)
    elif module not in batchnorms:  # A conv.
      scale = np.prod(shape[1:]) ** -0.5 if name == "weight" else 0.1
      state[key] = rng.standard_normal(shape, np.float32) * np.float32(scale)
    elif name in ("weight", "running_var"):
      low, width = (0.5, 1.0) if name == "weight" else (0.5, 1.5)
      state[key] = rng.random(shape, np.float32) * np.float32(width) + np.float32(low)
    else:
      state[key] = rng.standard_normal(shape, np.float32) * np.float32(0.2)
  return state


def inputs(seed: int) -> np.ndarray:
  """An odd, non-square float32 NHWC batch of two images."""
  return np.random.default_rng(seed).uniform(-120.0, 130.0, (2, 33, 41, 3)).astype(np.float32)


def constant_value(index: int, key: str) -> float:
  """The value of every element of entry ``index`` of ``deeplab_layout5.pth``."""
  return float(index % 1000 + 1) if key.endswith("num_batches_tracked") else (index % 7 + 1) / 8


def _reference(backbone: str, model_class: str, layout_idx: int):
  from mtajax import models  # pylint: disable=g-import-not-at-top
  import treemtl  # pylint: disable=g-import-not-at-top
  layout = [[set(s) for s in block] for block in models.fine_layout(backbone, layout_idx, 3).blocks]
  if model_class == "Deeplab_ASPP_Layout":
    return treemtl.Deeplab_ASPP_Layout(layout, TASKS)
  return treemtl.MTSeqModel(PROTOTXT[backbone], layout, TASKS)


def _case(torch, backbone: str, model_class: str, layout_idx: int, gradient: bool):
  """(key shapes, golden arrays) of one case."""
  reference = _reference(backbone, model_class, layout_idx).eval()
  key_shapes = [[k, list(v.shape)] for k, v in reference.state_dict().items()]
  state = seeded_state_dict(key_shapes, layout_idx)
  reference.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
  name = case_name(backbone, model_class, layout_idx)
  x = inputs(layout_idx)
  golden = {f"{name}/x": x, f"{name}/sums": np.array([v.sum(dtype=np.float64)
                                                      for v in state.values()])}
  with torch.no_grad():
    out = reference(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
  for t in TASKS:
    golden[f"{name}/{t}"] = out[t].numpy().transpose(0, 2, 3, 1)
  if gradient:
    # In float64: in float32, ReLU inputs within rounding of 0 (the wide ASPP heads have ~1e6 of
    # them) flip a few units between PyTorch and XLA and move ~1e-3 of the gradient.
    rng = np.random.default_rng(layout_idx + 1000)
    cotangent = {t: rng.normal(size=golden[f"{name}/{t}"].shape) for t in TASKS}
    x64 = torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float64)).requires_grad_(True)
    out = reference.double()(x64)
    sum((out[t] * torch.from_numpy(cotangent[t].transpose(0, 3, 1, 2).copy())).sum()
        for t in TASKS).backward()
    golden[f"{name}/grad"] = x64.grad.numpy().transpose(0, 2, 3, 1)
    golden.update({f"{name}/cotangent/{t}": c for t, c in cotangent.items()})
  return key_shapes, golden


def _write_constant_checkpoint(torch, path: pathlib.Path) -> None:
  """``deeplab_layout5.pth``: the full state_dict (its ``_metadata`` too), stride-0 tensors."""
  state_dict = _reference("resnet34", "Deeplab_ASPP_Layout", 5).state_dict()
  for i, (key, value) in enumerate(state_dict.items()):
    state_dict[key] = torch.full((), constant_value(i, key), dtype=value.dtype).expand(value.shape)
  torch.save({"iter": 1, "state_dict": state_dict}, path)


def _write_loader_tensors(torch, path: pathlib.Path) -> None:
  """``loader_tensors.pth`` and, as ``torch.load`` reads it, ``loader_tensors.npz``."""
  base = torch.arange(24, dtype=torch.float64)
  saved = collections.OrderedDict(
      a=base.reshape(4, 6)[1:, ::2], b=base.to(torch.bfloat16)[3:7],
      c=torch.tensor(3, dtype=torch.int64),
      d=torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0)).permute(2, 0, 1),
      e=torch.tensor([[True], [False]]))
  torch.save(saved, path)
  loaded = torch.load(path, weights_only=True)
  np.savez_compressed(path.with_suffix(".npz"), **{
      k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy() for k, v in loaded.items()})


def main() -> None:
  import torch  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(HERE.parents[1]))  # This checkout's mtajax.
  keys, golden = {}, {}
  for backbone, model_class, layout_idx, gradient in CASES:
    key_shapes, arrays = _case(torch, backbone, model_class, layout_idx, gradient)
    keys[case_name(backbone, model_class, layout_idx)] = key_shapes
    golden.update(arrays)
    print(f"{case_name(backbone, model_class, layout_idx)}: {len(key_shapes)} keys")
  np.savez_compressed(HERE / "goldens.npz", **golden)
  (HERE / "golden_keys.json.gz").write_bytes(gzip.compress(json.dumps(keys).encode(), mtime=0))
  _write_constant_checkpoint(torch, HERE / "deeplab_layout5.pth")
  _write_loader_tensors(torch, HERE / "loader_tensors.pth")


if __name__ == "__main__":
  main()
