"""``from_torch``: TreeMTL / MTLAttack-DGBA PyTorch checkpoints as mtajax models.

The reference is TreeMTL commit 70d26aafb60031d267812b3a9bb4c4bde87e01a4
(github.com/zhanglijun95/TreeMTL; the repository has no licence file, so none of its code is in
mtajax). ``tests/torch_reference/treemtl.py`` is mtajax's own PyTorch transcription of its
``Deeplab_ASPP_Layout`` and ``MTSeqModel`` (same modules, forward pass and state_dict keys);
``tests/torch_reference/check_treemtl.py`` checked it against a clone of that commit (identical
keys, key order, shapes and outputs for AS, IND and layout 5 of both backbones) and wrote
``keys_layout5.json.gz``, TreeMTL's own key names and shapes.

None of the tests needs torch. They check the conversion against those key names and shapes, the
error messages and a layout-5 checkpoint written by ``torch.save`` (``deeplab_layout5.pth``); and
they compare every head's eval output and the input gradients with the goldens
``torch_reference/make_goldens.py`` computed with the transcription (rerun it, with torch, when the
transcription or the cases change), on state dicts rebuilt here from the same NumPy seeds. The
restricted pickle loader is tested in test_models_torch_pickle.py, the ``import`` command in
test_run_import.py.
"""

import functools
import gzip
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtajax import models
from mtajax.models import torch_import
from torch_reference import make_goldens

HERE = pathlib.Path(__file__).resolve().parent
REFERENCE = HERE / "torch_reference"
TASKS = make_goldens.TASKS


@functools.cache
def _golden_keys():
  return json.loads(gzip.decompress((REFERENCE / "keys_layout5.json.gz").read_bytes()))


def _golden_state(name: str) -> dict[str, np.ndarray]:
  """TreeMTL's layout-5 keys and shapes with zero values (int64 for ``num_batches_tracked``)."""
  return {k: np.zeros(s, np.int64 if k.endswith("num_batches_tracked") else np.float32)
          for k, s in _golden_keys()[name]}


# -- key mapping against TreeMTL's key names (no torch needed) -----------------------------------

# (golden key, BranchedModel path, is a conv kernel): copy K of layout 5 -> (block, group).
_PROBES = {
    "resnet34/Deeplab_ASPP_Layout": [
        ("backbone.mtl_blocks.1.residual_block.0.weight", ("copies", 0, 1, "conv", "kernel"), 1),
        ("backbone.mtl_blocks.1.residual_block.1.running_var", ("copies", 0, 1, "bn", "var"), 0),
        ("backbone.mtl_blocks.8.residual_block.ds.0.weight",
         ("copies", 4, 0, "down_conv", "kernel"), 1),
        ("backbone.mtl_blocks.9.residual_block.block.bn2.weight",
         ("copies", 4, 1, "bn2", "scale"), 0),
        ("backbone.mtl_blocks.42.residual_block.block.conv1.weight",
         ("copies", 16, 2, "conv1", "kernel"), 1)],
    "resnet34/MTSeqModel": [
        ("backbone.mtl_blocks.8.compute_nodes.0.basicOp.weight",
         ("copies", 4, 0, "down_conv", "kernel"), 1),
        ("backbone.mtl_blocks.8.compute_nodes.2.basicOp.weight",
         ("copies", 4, 0, "conv1", "kernel"), 1),
        ("backbone.mtl_blocks.9.compute_nodes.6.basicOp.running_mean",
         ("copies", 4, 1, "bn2", "mean"), 0),
        ("backbone.mtl_blocks.10.compute_nodes.4.basicOp.bias", ("copies", 5, 0, "bn2", "bias"),
         0)],
    "mobilenetv2/MTSeqModel": [
        ("backbone.mtl_blocks.13.compute_nodes.3.basicOp.weight",
         ("copies", 6, 1, "dw", "conv", "kernel"), 1),
        ("backbone.mtl_blocks.13.compute_nodes.7.basicOp.running_var",
         ("copies", 6, 1, "project", "bn", "var"), 0),
        ("backbone.mtl_blocks.71.compute_nodes.0.basicOp.weight",
         ("copies", 31, 1, "conv", "kernel"), 1)],
}
_HEAD_PROBES = [("heads.normal.fc3.conv1.weight",
                 ("heads", 1, "branches", 2, "conv1", "kernel"), 1),
                ("heads.depth_zbuffer.fc4.conv3.bias",
                 ("heads", 2, "branches", 3, "conv3", "bias"), 0)]


def _leaf(model, path):
  node = model
  for p in path:
    node = node[p] if isinstance(p, int) else getattr(node, p)
  return np.asarray(node[...])


@pytest.mark.parametrize("name", list(_PROBES))
def test_reference_shapes_are_treemtls(name):
  backbone, model_class = name.split("/")
  got = models.torch_import.reference_shapes(backbone, TASKS, 5, model_class)
  assert [[k, list(s)] for k, s in got.items()] == _golden_keys()[name]


@pytest.mark.parametrize("name", list(_PROBES))
def test_treemtl_keys_map_onto_the_model(name):
  backbone, _ = name.split("/")
  state = _golden_state(name)
  rng = np.random.default_rng(0)
  probes = _PROBES[name] + _HEAD_PROBES
  for key, _, _ in probes:
    state[key] = rng.normal(size=state[key].shape).astype(np.float32)
  model = models.from_torch(state, backbone, TASKS, 5)
  assert model.layout == models.fine_layout(backbone, 5, 3)
  for key, path, kernel in probes:
    want = state[key].transpose(2, 3, 1, 0) if kernel else state[key]
    np.testing.assert_array_equal(_leaf(model, path), want, err_msg=key)


@functools.cache
def _resnet_deeplab_state():
  return _golden_state("resnet34/Deeplab_ASPP_Layout")


def _without(state, key):
  return {k: v for k, v in state.items() if k != key}


@pytest.mark.parametrize("change,message", [
    (lambda s, a: (_without(s, "backbone.mtl_blocks.3.residual_block.block.bn1.running_var"), a),
     "missing key backbone.mtl_blocks.3.residual_block.block.bn1.running_var"),
    (lambda s, a: ({**s, "backbone.mtl_blocks.3.residual_block.extra.weight": np.zeros(1)}, a),
     "unexpected key backbone.mtl_blocks.3.residual_block.extra.weight"),
    (lambda s, a: (s, {**a, "tasks": {**TASKS, "segment_semantic": 40}}),
     r"heads.segment_semantic.fc1.conv3.weight has shape \(5, 1024, 1, 1\) but .* needs "
     r"\(40, 1024, 1, 1\)"),
    (lambda s, a: (s, {**a, "layout": 2}), "holds 43 block copies but layout .* has 51"),
    (lambda s, a: (s, {**a, "backbone": "mobilenetv2"}), "Deeplab_ASPP_Layout is a ResNet34"),
    (lambda s, a: (s, {**a, "backbone": "small"}), "reads TreeMTL's backbones"),
    (lambda s, a: (s, {**a, "tasks": {"segment_semantic": 5, "normal": 3}, "layout": 0}),
     r"heads are \['segment_semantic', 'normal', 'depth_zbuffer'\] but the tasks are"),
    (lambda s, a: (s, {**a, "tasks": dict(reversed(TASKS.items()))}), "pass them in this order"),
    (lambda s, a: (s, {**a, "model_class": "MTSeqModel"}), "keys are those of a "
     "Deeplab_ASPP_Layout, not of a MTSeqModel"),
    (lambda s, a: ({**s, "backbone.mtl_blocks.0.residual_block.0.weight":
                    np.full((64, 3, 7, 7), np.nan, np.float32)}, a), "holds non-finite values"),
    (lambda s, a: ({"encoder.weight": np.zeros(1)}, a), "not a TreeMTL / DGBA layout model"),
    (lambda s, a: (torch_import.Checkpoint(s, models.parse_layout(
        str(models.fine_layout("resnet34", 5, 3)).replace("[{1, 2}, {0}]", "[{0}, {1, 2}]"))), a),
     "set order counts"),
    (lambda s, a: (s, {**a, "layout": None}), "stores no layout"),
])
def test_conversion_errors_are_one_line(change, message):
  state, kwargs = change(_resnet_deeplab_state(), {"backbone": "resnet34", "tasks": TASKS,
                                                   "layout": 5})
  with pytest.raises(ValueError, match=message) as e:
    models.from_torch(state, **kwargs)
  assert "\n" not in str(e.value)


# -- equivalence with the PyTorch transcription (goldens of make_goldens.py; no torch needed) ---

@functools.cache
def _goldens() -> dict[str, np.ndarray]:
  with np.load(REFERENCE / "goldens.npz") as z:
    return {k: z[k] for k in z.files}


@functools.cache
def _case_keys() -> dict[str, list]:
  return json.loads(gzip.decompress((REFERENCE / "golden_keys.json.gz").read_bytes()))


def _rel(a, b) -> float:
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.slow
@pytest.mark.parametrize("backbone,model_class,layout_idx,gradient", make_goldens.CASES)
def test_matches_the_pytorch_reference(backbone, model_class, layout_idx, gradient):
  name = make_goldens.case_name(backbone, model_class, layout_idx)
  keys, golden = _case_keys()[name], _goldens()
  if layout_idx == 5:  # The transcription has TreeMTL's keys.
    assert keys == _golden_keys()[f"{backbone}/{model_class}"]
  state_dict = make_goldens.seeded_state_dict(keys, layout_idx)
  np.testing.assert_allclose(
      [v.sum(dtype=np.float64) for v in state_dict.values()], golden[f"{name}/sums"], rtol=1e-6,
      err_msg="the NumPy-seeded weights are not those of the goldens; if NumPy's random stream "
      "changed, rerun tests/torch_reference/make_goldens.py")
  predict, state = models.pure_predict(models.from_torch(state_dict, backbone, TASKS, layout_idx))
  x = golden[f"{name}/x"]
  got = jax.jit(predict)(state, x)
  for t in TASKS:
    ref = golden[f"{name}/{t}"]
    assert got[t].shape == ref.shape
    assert _rel(np.asarray(got[t]), ref) <= 1e-4, t
    assert _rel(ref[0], ref[1]) > 1e-2, "outputs do not depend on the input"
  if gradient:  # float64 on both sides, as in make_goldens.py
    ref, cotangent = golden[f"{name}/grad"], {t: golden[f"{name}/cotangent/{t}"] for t in TASKS}
    with jax.enable_x64(True):
      state64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), state)
      loss = lambda s, x: sum((predict(s, x)[t] * cotangent[t]).sum() for t in TASKS)  # pylint: disable=unnecessary-lambda-assignment
      grad = np.asarray(jax.jit(jax.grad(loss, argnums=1))(state64, x.astype(np.float64)))
    assert grad.dtype == np.float64 and np.all(np.isfinite(ref)) and np.max(np.abs(ref)) > 0
    assert _rel(grad, ref) <= 1e-4


def test_a_torch_saved_full_checkpoint_converts():
  """``deeplab_layout5.pth``: torch.save of a layout-5 Deeplab_ASPP_Layout ``state_dict()``."""
  path, keys = REFERENCE / "deeplab_layout5.pth", _golden_keys()["resnet34/Deeplab_ASPP_Layout"]
  read = models.read_checkpoint(path).state_dict
  assert [[k, list(v.shape)] for k, v in read.items()] == keys
  for i, (k, v) in enumerate(read.items()):
    assert v.dtype == (np.int64 if k.endswith("num_batches_tracked") else np.float32), k
    assert np.all(v == make_goldens.constant_value(i, k)), k
  model = models.from_torch(path, "resnet34", TASKS, 5)
  index = {k: i for i, (k, _) in enumerate(keys)}
  for key, leaf, _ in _PROBES["resnet34/Deeplab_ASPP_Layout"] + _HEAD_PROBES:
    assert np.all(_leaf(model, leaf) == make_goldens.constant_value(index[key], key)), key
