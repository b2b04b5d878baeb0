"""Orbax ``CheckpointManager`` wrapper: train state + a JSON record that rebuilds the model.

A checkpoint step holds two items: ``state`` (params, BatchNorm statistics, optimiser state, step,
PRNG key; pure pytrees) and ``meta`` (JSON: the training config, the fine layout, the data-iterator
position and a sha256 per state leaf). Orbax writes each step into a temporary directory and renames
it when complete, and ``all_steps`` lists finalized steps only, so a killed save is never restored.
Orbax keeps no checksums of the array data, so a restore compares every leaf with the sha256 its
step's ``meta`` holds: a damaged step (flipped bits, truncated or garbled files) raises
:class:`DamagedCheckpointError` naming the step to delete. Steps saved before the checksums existed
(no ``checksums`` in ``meta``) are restored without that check.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

FORMAT = "mtajax-train-1"


class DamagedCheckpointError(ValueError):
  """A checkpoint step whose files are unreadable or whose arrays differ from their checksums."""

  def __init__(self, directory: Path, step: int, problem: str):
    super().__init__(f"Checkpoint {directory}/{step} is damaged ({problem}); delete "
                     f"{directory}/{step} to resume from the previous step.")


def _host(x: Any) -> np.ndarray:
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    x = x.addressable_data(0)  # A replicated train state: every shard is the whole array.
  return np.asarray(x)


def checksums(state: Any) -> dict[str, str]:
  """``{leaf path: sha256 of its bytes}`` of a pytree of arrays (on the host or a device)."""
  leaves = jax.tree_util.tree_leaves_with_path(state)
  values = jax.device_get([_host(x) for _, x in leaves])
  return {jax.tree_util.keystr(p): hashlib.sha256(np.ascontiguousarray(v).data).hexdigest()
          for (p, _), v in zip(leaves, values)}


def _manager(directory: str | Path, max_to_keep: int | None = None, *,
             create: bool) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create)
  return ocp.CheckpointManager(Path(directory).absolute(), options=options,
                               item_names=("state", "meta"))


class Checkpointer:
  """Saves train states every call to :meth:`save`, keeping the last ``max_to_keep``."""

  def __init__(self, directory: str | Path, max_to_keep: int = 3):
    if max_to_keep < 1:
      raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}.")
    self.directory = Path(directory)
    self._manager = _manager(directory, max_to_keep, create=True)

  def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
    """Starts an asynchronous save of ``state`` and ``meta`` (JSON-serialisable) at ``step``."""
    meta = {"format": FORMAT, **meta, "checksums": checksums(state)}
    self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                     meta=ocp.args.JsonSave(meta)))

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def latest_step(directory: str | Path) -> int | None:
  """The latest complete checkpoint step in ``directory`` (None if there is none)."""
  if not Path(directory).is_dir():
    return None
  manager = _manager(directory, create=False)
  try:
    return manager.latest_step()
  finally:
    manager.close()


def _checked_step(manager: ocp.CheckpointManager, directory: Path, step: int | None) -> int:
  steps = manager.all_steps()
  if not steps:
    raise ValueError(f"No complete checkpoint in {directory}; train into it first or point at a "
                     "training workdir's checkpoints/ folder.")
  if step is None:
    return max(steps)
  if step not in steps:
    raise ValueError(f"No checkpoint for step {step} in {directory}; available: {sorted(steps)}.")
  return step


def restore_meta(directory: str | Path, step: int | None = None) -> tuple[int, dict[str, Any]]:
  """``(step, meta)`` of the latest (or given) complete checkpoint in ``directory``."""
  directory = Path(directory)
  if not directory.is_dir():
    raise ValueError(f"Checkpoint directory {directory} does not exist.")
  manager = _manager(directory, create=False)
  try:
    step = _checked_step(manager, directory, step)
    try:
      meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
      raise DamagedCheckpointError(directory, step, f"unreadable meta record: {type(e).__name__}"
                                   ) from None
  finally:
    manager.close()
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    raise ValueError(f"Checkpoint {directory}/{step} is not an {FORMAT} checkpoint (found format "
                     f"{meta.get('format') if isinstance(meta, dict) else None!r}).")
  return step, meta


def restore_state(directory: str | Path, step: int, target: Any,
                  sums: Mapping[str, str] | None = None) -> Any:
  """The state saved at ``step``, restored into the structure, shapes and dtypes of ``target``.

  ``sums``: the step's ``meta["checksums"]`` (None: an older step without them, not verified).
  """
  directory = Path(directory)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  manager = _manager(directory, create=False)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract))).state
  except Exception as e:  # Orbax raises many types for missing/corrupt/mismatched trees.
    # Their text ends in TensorStore's pybind repr: the type alone is the useful part.
    raise DamagedCheckpointError(directory, step, f"{type(e).__name__} reading the state; or it "
                                 "does not match the model its config builds") from None
  finally:
    manager.close()
  pairs = zip(jax.tree_util.tree_leaves_with_path(restored), jax.tree.leaves(target))
  mismatch = [f"{jax.tree_util.keystr(p)} {a.shape}/{a.dtype} vs {b.shape}/{b.dtype}"
              for (p, a), b in pairs if a.shape != b.shape or a.dtype != b.dtype]
  if mismatch:
    raise ValueError(f"Checkpoint {directory}/{step} is incompatible with its config's model: "
                     f"{mismatch[0]} (+{len(mismatch) - 1} more).")
  if sums is not None:
    bad = [p for p, h in checksums(restored).items() if sums.get(p) != h]
    if bad:
      raise DamagedCheckpointError(directory, step, f"{len(bad)} arrays differ from their "
                                   f"checksums, first {bad[0]}")
  return restored


def restore_intact(directory: str | Path, target: Any,
                   check: Callable[[dict[str, Any]], None]) -> tuple[int, Any, list[int]]:
  """``(step, state, damaged steps)``: the latest step that restores intact, newest first.

  ``check(meta)`` vets each step's meta first (e.g. same model; its errors propagate). Step 0 and
  ``target`` when every step is damaged.
  """
  directory = Path(directory)
  manager = _manager(directory, create=False)
  try:
    steps = sorted(manager.all_steps(), reverse=True)
  finally:
    manager.close()
  damaged = []
  for step in steps:
    try:
      _, meta = restore_meta(directory, step)
      check(meta)
      return step, restore_state(directory, step, target, meta.get("checksums")), damaged
    except DamagedCheckpointError:
      damaged.append(step)
  return 0, target, damaged
