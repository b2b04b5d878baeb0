"""TreeMTL / MTLAttack-DGBA PyTorch checkpoints → mtajax NNX models (:func:`from_torch`).

Two reference classes are read, told apart by their ``state_dict`` keys:

* ``Deeplab_ASPP_Layout`` (TreeMTL ``main/models.py``, used by DGBA for NYUv2 + ResNet34):
  ``backbone.mtl_blocks.K.residual_block.…``;
* ``MTSeqModel`` (TreeMTL ``main/auto_models.py``, ResNet34 or MobileNetV2 from a prototxt):
  ``backbone.mtl_blocks.K.compute_nodes.J.basicOp.…``, ``J`` = the layer's place in its block.

Block copy ``K`` runs over fine blocks, and within a block over the layout's task sets in list
order, exactly like mtajax's ``BranchedModel.copies``; heads are
``heads.<task>.fc{1..4}.conv{1,2,3}``.
Conv weights go OIHW → HWIO, BatchNorm ``weight/bias/running_mean/running_var`` → ``scale/bias/
mean/var`` (``num_batches_tracked`` is dropped). Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtajax.models import build
from mtajax.models import mobilenet
from mtajax.models import resnet
from mtajax.models import torch_pickle
from mtajax.models.branched import BranchedModel
from mtajax.models.layouts import Layout

MODEL_CLASSES = ("Deeplab_ASPP_Layout", "MTSeqModel")
_BACKBONES = ("resnet34", "mobilenetv2")
_COPY = re.compile(r"backbone\.mtl_blocks\.(\d+)\.")
_HEAD = re.compile(r"heads\.([^.]+)\.")
_BN = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}

# mtajax module path -> the module's place in the reference block. MTSeqModel: the prototxt
# layers of the block in file order (None = ReLU, pooling or addition: a place, no parameters).
_SEQ_STEM = ("conv", "bn", None, None)
_SEQ_BASIC = ("conv1", "bn1", None, "conv2", "bn2", None, None)
_SEQ_PROJECTION = ("down_conv", "down_bn")  # the prototxt writes the shortcut first
_SEQ_INVERTED = ("expand/conv", "expand/bn", None, "dw/conv", "dw/bn", None, "project/conv",
                 "project/bn", None)
_DEEPLAB_STEM = {"conv": "residual_block.0", "bn": "residual_block.1"}
_DEEPLAB_BASIC = {"conv1": "residual_block.block.conv1", "bn1": "residual_block.block.bn1",
                  "conv2": "residual_block.block.conv2", "bn2": "residual_block.block.bn2",
                  "down_conv": "residual_block.ds.0", "down_bn": "residual_block.ds.1"}


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  """A reference checkpoint as NumPy: its ``state_dict`` and, if it stores one, its fine layout."""
  state_dict: dict[str, np.ndarray]
  layout: Layout | None = None


def _numpy(value: Any) -> np.ndarray:
  if hasattr(value, "detach"):  # A torch tensor (torch itself is not imported).
    value = value.detach().cpu().numpy()
  return np.asarray(value)


def read_checkpoint(source: Any) -> Checkpoint:
  """Reads a ``state_dict`` (torch tensors or NumPy arrays), a TreeMTL / DGBA checkpoint dict
  (``{'state_dict': …, 'layout': …}``) or a path to a ``.pth`` / ``.model`` (zip, read by
  :mod:`mtajax.models.torch_pickle`) or ``.npz`` file; strips a DataParallel ``module.`` prefix."""
  if isinstance(source, Checkpoint):
    return source
  if isinstance(source, (str, os.PathLike)):
    path = Path(source)
    if path.suffix == ".npz":
      if not path.is_file():
        raise ValueError(f"No checkpoint at {path}; pass an existing .npz, .pth or .model file.")
      with np.load(path, allow_pickle=False) as z:
        source = {k: z[k] for k in z.files}
    else:
      source = torch_pickle.load(path)
  if not isinstance(source, Mapping):
    raise ValueError(f"Expected a state_dict mapping, got {type(source).__name__}; pass "
                     "model.state_dict(), a checkpoint dict or a file path.")
  layout = source.get("layout")
  if isinstance(source.get("state_dict"), Mapping):
    source = source["state_dict"]
  state = {str(k): _numpy(v) for k, v in source.items()}
  if state and all(k.startswith("module.") for k in state):
    state = {k[len("module."):]: v for k, v in state.items()}
  stored = getattr(layout, "state", None)
  return Checkpoint(state, None if stored is None else Layout(stored))


def _model_class(keys: list[str]) -> str:
  if any(".residual_block." in k for k in keys):
    return "Deeplab_ASPP_Layout"
  if any(".compute_nodes." in k for k in keys):
    return "MTSeqModel"
  raise ValueError(f"The state_dict has no 'backbone.mtl_blocks.K.residual_block.' "
                   f"(Deeplab_ASPP_Layout) or '….compute_nodes.' (MTSeqModel) keys (first key: "
                   f"{keys[0] if keys else None!r}); it is not a TreeMTL / DGBA layout model.")


def _block_modules(block: nnx.Module, model_class: str) -> list[tuple[str, str]]:
  """(mtajax module path, reference module prefix) of the convs and BatchNorms of one copy."""
  if model_class == "Deeplab_ASPP_Layout":
    table = _DEEPLAB_STEM if isinstance(block, resnet.Stem) else _DEEPLAB_BASIC
    return [(path, prefix) for path, prefix in table.items()
            if getattr(block, path.split("/")[0]) is not None]
  if isinstance(block, resnet.Stem):
    places = _SEQ_STEM
  elif isinstance(block, resnet.BasicBlock):
    places = (_SEQ_PROJECTION if block.down_conv is not None else ()) + _SEQ_BASIC
  elif isinstance(block, mobilenet.InvertedResidual):
    places = _SEQ_INVERTED
  else:
    places = ("conv", "bn")
  return [(path, f"compute_nodes.{j}.basicOp") for j, path in enumerate(places) if path]


def _module_keys(prefix: str, path: tuple, params: Mapping[str, Any]):
  """(reference key, mtajax leaf path, mtajax shape, is a conv kernel) of one conv or BatchNorm;
  ``num_batches_tracked`` has no mtajax path (it is not needed)."""
  if "kernel" in params:
    yield f"{prefix}.weight", path + ("kernel",), params["kernel"].shape, True
    if "bias" in params:
      yield f"{prefix}.bias", path + ("bias",), params["bias"].shape, False
  else:
    for ref, ours in _BN.items():
      yield f"{prefix}.{ref}", path + (ours,), params[ours].shape, False
    yield f"{prefix}.num_batches_tracked", None, (), False


def _subtree(tree: Mapping, path: tuple) -> Mapping:
  for p in path:
    tree = tree[p]
  return tree


def _key_map(model: BranchedModel, pure: Mapping, model_class: str):
  """Every reference key of ``model``: (key, mtajax leaf path, mtajax shape, is a conv kernel)."""
  k = 0
  for i, copies in enumerate(model.copies):
    for g, block in enumerate(copies):
      for path, prefix in _block_modules(block, model_class):
        full = ("copies", i, g) + tuple(path.split("/"))
        yield from _module_keys(f"backbone.mtl_blocks.{k}.{prefix}", full, _subtree(pure, full))
      k += 1
  for t, name in enumerate(model.task_names):
    for r in range(len(model.heads[t].branches)):
      for c in ("conv1", "conv2", "conv3"):
        full = ("heads", t, "branches", r, c)
        yield from _module_keys(f"heads.{name}.fc{r + 1}.{c}", full, _subtree(pure, full))


def _torch_shape(shape: tuple[int, ...], kernel: bool) -> tuple[int, ...]:
  return (shape[3], shape[2], shape[0], shape[1]) if kernel else tuple(shape)


def _check_structure(state: Mapping[str, np.ndarray], names: list[str], fine: Layout,
                     backbone: str) -> None:
  """One-line errors for wrong tasks (head names, count, order) or a wrong layout / backbone."""
  heads = list(dict.fromkeys(m.group(1) for k in state if (m := _HEAD.match(k))))
  if heads != names:
    fix = ("pass them in this order" if sorted(heads) == sorted(names)
           else "pass one task per head, named as in the checkpoint")
    raise ValueError(f"The state_dict's heads are {heads} but the tasks are {names}; {fix}.")
  copies = {int(m.group(1)) for k in state if (m := _COPY.match(k))}
  want = sum(fine.copies_per_block)
  if len(copies) != want:
    raise ValueError(f"The state_dict holds {len(copies)} block copies but layout {fine} of "
                     f"{backbone} has {want}; pass the backbone and layout the model was "
                     "trained with.")


def _check_class(backbone: str, model_class: str) -> None:
  if backbone not in _BACKBONES:
    raise ValueError(f"from_torch reads TreeMTL's backbones {_BACKBONES}, not {backbone!r}.")
  if model_class not in MODEL_CLASSES:
    raise ValueError(f"Unknown model_class {model_class!r}; use one of {MODEL_CLASSES}.")
  if model_class == "Deeplab_ASPP_Layout" and backbone != "resnet34":
    raise ValueError(f"Deeplab_ASPP_Layout is a ResNet34 model; its keys do not fit {backbone}.")


def _prepare(backbone: str, tasks: Mapping[str, int], fine: Layout, model_class: str):
  """The abstract model, its variables (a fresh copy) and every reference key of it."""
  abstract, graphdef, variables = _abstract_model(backbone, tuple(tasks.items()), fine.blocks)
  variables = jax.tree.map(lambda v: v, variables)  # The cached structure stays abstract.
  pure = nnx.to_pure_dict(variables)
  return graphdef, variables, pure, list(_key_map(abstract, pure, model_class))


def reference_shapes(backbone: str, tasks: Mapping[str, int], layout: Layout | str | int,
                     model_class: str = "MTSeqModel") -> dict[str, tuple[int, ...]]:
  """The ``state_dict`` keys (in TreeMTL's order) and shapes of the reference model."""
  _check_class(backbone, model_class)
  fine = build.fine_layout(backbone, layout, len(tasks))
  return {key: _torch_shape(shape, kernel)
          for key, _, shape, kernel in _prepare(backbone, tasks, fine, model_class)[3]}


@functools.lru_cache(maxsize=4)
def _abstract_model(backbone: str, tasks: tuple[tuple[str, int], ...],
                    blocks: tuple) -> tuple[BranchedModel, nnx.GraphDef, nnx.State]:
  """The model's structure and shapes without initialising it (keyed on the ordered blocks)."""
  model = nnx.eval_shape(lambda: build.build_model(backbone, dict(tasks), Layout(blocks),
                                                   rngs=nnx.Rngs(0)))
  return (model, *nnx.split(model))


def from_torch(state_dict: Any, backbone: str, tasks: Mapping[str, int],
               layout: Layout | str | int | None = None, *,
               model_class: str | None = None) -> BranchedModel:
  """Converts a TreeMTL / DGBA checkpoint into mtajax's NNX model (eval with ``pure_predict``).

  Args:
    state_dict: a ``state_dict`` (torch tensors or NumPy arrays, int64 ``num_batches_tracked``
      included), a checkpoint dict holding one under ``'state_dict'``, or a ``.pth`` / ``.model``
      / ``.npz`` path (see :func:`read_checkpoint`; pickles are read without running code).
    backbone: ``'resnet34'`` or ``'mobilenetv2'``.
    tasks: ordered task name → channels, in the order of the reference's heads.
    layout: the coarse or fine layout (index, string or :class:`Layout`) in the reference's set
      order; ``None`` takes the layout a TreeMTL checkpoint stores.
    model_class: ``'Deeplab_ASPP_Layout'`` or ``'MTSeqModel'``; default: told from the keys.

  Returns:
    A :class:`BranchedModel` predicting ``{task: (B, h, w, C)}`` at feature resolution from NHWC
    input in the reference's mean-subtracted BGR encoding.

  Raises:
    ValueError: (one line) naming the first missing or unexpected key, the first shape that does
      not fit, a block-copy count that does not fit the layout, heads that do not fit the tasks,
      non-finite weights, or a layout that differs from the one the checkpoint stores.
  """
  _check_class(backbone, model_class or MODEL_CLASSES[1])
  ckpt = read_checkpoint(state_dict)
  state, names = ckpt.state_dict, list(tasks)
  if layout is None and ckpt.layout is None:
    raise ValueError("The checkpoint stores no layout; pass layout= (the index it was trained "
                     "with).")
  fine = build.fine_layout(backbone, ckpt.layout if layout is None else layout, len(names))
  if ckpt.layout is not None and fine.blocks != ckpt.layout.blocks:
    raise ValueError(f"The checkpoint was trained with layout {ckpt.layout} but {fine} was "
                     "given (set order counts); pass its layout index or layout=None.")
  found = _model_class(list(state))
  if model_class is not None and model_class != found:
    raise ValueError(f"The keys are those of a {found}, not of a {model_class}; drop "
                     "model_class or pass the right one.")
  _check_class(backbone, found)
  _check_structure(state, names, fine, backbone)

  graphdef, variables, pure, expected = _prepare(backbone, tasks, fine, found)
  known = {key for key, *_ in expected}
  expected = [e for e in expected if e[1] is not None]  # num_batches_tracked is optional
  missing = [key for key, *_ in expected if key not in state]
  unexpected = [k for k in state if k not in known]
  context = f"a {found} with backbone {backbone} and tasks {names}"
  if missing or unexpected:
    what = (f"missing key {missing[0]}" if missing
            else f"unexpected key {unexpected[0]}")
    raise ValueError(f"The state_dict does not fit {context}: {what} ({len(missing)} missing, "
                     f"{len(unexpected)} unexpected); check the backbone and model_class.")
  for key, _, shape, kernel in expected:
    if state[key].shape != _torch_shape(shape, kernel):
      raise ValueError(f"{key} has shape {state[key].shape} but {context} needs "
                       f"{_torch_shape(shape, kernel)}; check the backbone and the task channels.")
  for key, path, _, kernel in expected:
    value = state[key]
    if not np.all(np.isfinite(value)):
      raise ValueError(f"{key} holds non-finite values; the checkpoint is corrupt.")
    _subtree(pure, path[:-1])[path[-1]] = jnp.asarray(
        value.transpose(2, 3, 1, 0) if kernel else value, jnp.float32)
  nnx.replace_by_pure_dict(variables, pure)
  return nnx.merge(graphdef, variables)
