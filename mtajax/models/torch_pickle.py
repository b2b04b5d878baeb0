"""Reads ``torch.save`` files into NumPy arrays without torch and without running code from them.

A ``.pth`` / ``.model`` file is a zip archive holding a pickle (``<name>/data.pkl``) and one raw
little-endian file per tensor storage (``<name>/data/<key>``). Unpickling can call any importable
function, so :func:`load` unpickles with an allow-list: containers (``OrderedDict``, ``set``),
tensors (rebuilt as NumPy arrays from their storage, offset, shape and strides) and TreeMTL's
``Layout`` (kept as an inert record of its attributes, whose methods are never imported). Any other
global — a class of the model, ``os.system``, ``builtins.eval``… — stops the load before it is
called.
"""

from __future__ import annotations

import collections
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": jnp.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class StorageType:
  """Stands for ``torch.<Type>Storage`` in a pickle: only its element dtype is used."""

  def __init__(self, dtype: Any):
    self.dtype = np.dtype(dtype)


class PickledLayout:
  """An inert stand-in for TreeMTL's ``main.layout.Layout`` (``T``, ``B``, ``state``, …)."""

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state)


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple[int, ...],
                    stride: tuple[int, ...], *unused: Any) -> np.ndarray:
  """``torch._utils._rebuild_tensor_v2`` (and v3): a strided view of the storage, copied."""
  itemsize = storage.dtype.itemsize
  try:
    view = np.ndarray(tuple(size), storage.dtype, buffer=storage, offset=offset * itemsize,
                      strides=tuple(s * itemsize for s in stride))
  except (TypeError, ValueError) as e:
    raise pickle.UnpicklingError(f"a tensor does not fit its storage ({e})") from None
  return view.copy()


def _rebuild_parameter(data: np.ndarray, *unused: Any) -> np.ndarray:
  return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set, ("__builtin__", "frozenset"): frozenset,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("main.layout", "Layout"): PickledLayout,
    **{("torch", name): StorageType(dtype) for name, dtype in _STORAGE_DTYPES.items()},
}


class _Unpickler(pickle.Unpickler):
  """Resolves only allow-listed globals; storages come from the archive."""

  def __init__(self, file, archive: zipfile.ZipFile, prefix: str, byteorder: str):
    super().__init__(file)
    self._archive, self._prefix, self._byteorder = archive, prefix, byteorder
    self._storages: dict[str, np.ndarray] = {}

  def find_class(self, module: str, name: str) -> Any:
    try:
      return _ALLOWED[(module, name)]
    except KeyError:
      raise pickle.UnpicklingError(f"it references {module}.{name}") from None

  def persistent_load(self, pid: Any) -> np.ndarray:
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
            and isinstance(pid[1], StorageType)):
      raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
    storage_type, key, numel = pid[1], str(pid[2]), pid[4]
    if key not in self._storages:
      try:
        raw = self._archive.read(f"{self._prefix}data/{key}")
      except KeyError:
        raise pickle.UnpicklingError(f"storage {key} is missing from the archive") from None
      dtype = storage_type.dtype.newbyteorder("<" if self._byteorder == "little" else ">")
      array = np.frombuffer(raw, dtype=dtype)
      if array.size < numel:
        raise pickle.UnpicklingError(f"storage {key} holds {array.size} of {numel} values")
      self._storages[key] = array.astype(storage_type.dtype, copy=False)
    return self._storages[key]


def load(path: str | os.PathLike[str]) -> Any:
  """The object saved by ``torch.save`` at ``path``, tensors as NumPy arrays (see module doc).

  Raises:
    ValueError: (one line) if the file is missing, not a zip-format PyTorch file, or references
      anything outside the allow-list; nothing from the file is run.
  """
  path = Path(path)
  if not path.is_file():
    raise ValueError(f"No PyTorch checkpoint at {path}; pass the path of a .pth / .model file.")
  if not zipfile.is_zipfile(path):
    raise ValueError(f"{path} is not a zip-format PyTorch file (torch >= 1.6); re-save it with "
                     "torch.save(torch.load(path, weights_only=True), new_path).")
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
    if len(pickles) != 1:
      raise ValueError(f"{path} is a zip file but not a PyTorch checkpoint (no <name>/data.pkl).")
    prefix = pickles[0][:-len("data.pkl")]
    names = set(archive.namelist())
    byteorder = (archive.read(prefix + "byteorder").decode().strip()
                 if prefix + "byteorder" in names else "little")
    with archive.open(pickles[0]) as f:
      try:
        return _Unpickler(f, archive, prefix, byteorder).load()
      except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError, KeyError,
              IndexError) as e:
        raise ValueError(f"Refusing to load {path}: {e}; only tensors, containers and TreeMTL's "
                         "Layout are read (save the state_dict alone if it holds other "
                         "objects).") from None
