"""Orbax ``CheckpointManager`` wrapper: train state + a JSON record that rebuilds the model.

A checkpoint step holds two items: ``state`` (params, BatchNorm statistics, optimiser state, step,
PRNG key; pure pytrees) and ``meta`` (JSON: the training config, the fine layout, the data-iterator
position). Orbax writes each step into a temporary directory and renames it when complete, and
``all_steps`` lists finalized steps only, so a killed save is never restored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

FORMAT = "mtajax-train-1"


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
    meta = {"format": FORMAT, **meta}
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
      raise ValueError(f"Checkpoint {directory}/{step} has no readable meta record ({e}); it is "
                       "corrupt or not an mtajax training checkpoint.") from e
  finally:
    manager.close()
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    raise ValueError(f"Checkpoint {directory}/{step} is not an {FORMAT} checkpoint (found format "
                     f"{meta.get('format') if isinstance(meta, dict) else None!r}).")
  return step, meta


def restore_state(directory: str | Path, step: int, target: Any) -> Any:
  """The state saved at ``step``, restored into the structure, shapes and dtypes of ``target``."""
  directory = Path(directory)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  manager = _manager(directory, create=False)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract))).state
  except Exception as e:  # Orbax raises many types for missing/corrupt/mismatched trees.
    raise ValueError(f"Checkpoint {directory}/{step} does not match the model its config builds "
                     f"or is corrupt: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
  finally:
    manager.close()
  pairs = zip(jax.tree_util.tree_leaves_with_path(restored), jax.tree.leaves(target))
  mismatch = [f"{jax.tree_util.keystr(p)} {a.shape}/{a.dtype} vs {b.shape}/{b.dtype}"
              for (p, a), b in pairs if a.shape != b.shape or a.dtype != b.dtype]
  if mismatch:
    raise ValueError(f"Checkpoint {directory}/{step} is incompatible with its config's model: "
                     f"{mismatch[0]} (+{len(mismatch) - 1} more).")
  return restored
