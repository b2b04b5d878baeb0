"""The results store: one JSON record per (model, attack, direction, ε, config hash).

Records live in an append-only JSON-lines file: ``add`` appends one line with a single ``write``
and fsyncs it, holding an exclusive ``fcntl.flock`` on the file only meanwhile. Readers never take
the lock. A writer first reads what other processes appended since its last read, so two runs on
one workdir keep each other's records and never store a key twice; a second writer waits for the
first. A torn last line (a crash mid-write, garbage after a power loss) is dropped with a warning
and moved to ``<file>.torn``. I/O is O(total): every byte is read once and written once. The records
held are always as the file reads back (keys sorted, tuples as lists), so a report made after
``add`` equals one made from a reload.

The schema of a record is :class:`Record` (the fields every record has, those the report reads),
extended by :class:`GridRecord` (one cell of the attack grid, or a model's clean baseline) and
:class:`RobustRecord` (the worst case over the robust suite at one ε).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
from pathlib import Path
import tempfile
from typing import Any, BinaryIO, Iterable, Mapping
import warnings


def digest(value: Any) -> str:
  """A short stable hash of a JSON-serialisable value."""
  text = json.dumps(value, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def record_key(model: str, attack: str, direction: str | None, eps: float, num_steps: int,
               config_hash: str, attack_loss: str = "default") -> str:
  """The identity of a record (the default attack loss keeps the keys it had before that axis)."""
  parts = [model, attack, direction, float(eps), int(num_steps), config_hash]
  return digest(parts if attack_loss == "default" else parts + [attack_loss])


@dataclasses.dataclass(frozen=True, kw_only=True)
class Record:
  """The fields of every stored record: identity, model, attack cell, results, compute."""
  key: str  # :func:`record_key` of the cell.
  model: str  # ``mtajax.train.ensure.model_id``; the model fields as ``ensure.record_fields``.
  dataset: str
  backbone: str
  layout_idx: int | None  # The layout's index in the paper's table, None for an explicit layout.
  layout: str
  sharing_level: int
  adv_training: str  # 'none', or e.g. 'reference:gbmta:eps8'.
  tasks: list[str]
  attack: str  # 'clean', an attack name, or 'robust'.
  direction: str | None
  eps: float
  num_steps: int  # Attack steps (0 for clean and robust records).
  metrics: dict[str, dict[str, float]]  # Per task, under the attack (robust: the worst case).
  arp: float | None  # Average relative performance drop (None: undefined, see ``note``).
  arp_per_task: dict[str, float] | None
  config_hash: str  # What else changes the numbers: model identity, steps, evaluation data.
  devices: int
  time_s: float

  def as_json(self) -> dict[str, Any]:
    """The record as stored (a dict of JSON values)."""
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, kw_only=True)
class GridRecord(Record):
  """One evaluation of the grid: a model's clean baseline or one (attack, direction, loss, ε)."""
  train_steps: int
  attack_loss: str
  losses: dict[str, float]  # Per-task losses (the clean ones are the attacks' baselines).
  note: str | None  # Why ``arp`` is None.
  global_batch: int
  per_device_batch: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class RobustRecord(Record):
  """The robust evaluation of a model at one ε: per image the worst candidate of the suite."""
  suite: str
  clean_metrics: dict[str, dict[str, float]]
  envelope: dict[str, float]  # Per task, the ARP-t of that task's own worst-case set.
  candidate_arp: dict[str, float | None]  # Each candidate alone (None: not run on every image).
  wins: dict[str, int]  # Per candidate, the images whose worst case it is.
  passes_per_image: float
  grid_passes_per_image: int
  # Convergence (mtajax.robust.RobustEvaluation): ARP after each candidate with passes so far,
  # per candidate the share of images that peaked at its last iterate, and the rule's verdict.
  trajectory: list[dict[str, Any]]
  at_last_step: dict[str, float | None]
  converged: bool
  compile_s: float  # The part of time_s spent tracing and compiling.
  # The robust ARP minus that over the first half of each member's restarts (None: no member has
  # two; records before 2026-12-04 lack it).
  restart_gain: float | None = None


class Store:
  """An append-only JSON-lines file of records keyed by ``record['key']`` (module docstring).

  With ``write=False`` (the non-writing processes of a multi-host run) records are kept in memory
  only.
  """

  def __init__(self, path: str | Path, write: bool = True):
    self.path = Path(path)
    self.write = write
    self._records: dict[str, dict[str, Any]] = {}
    self._offset = 0  # Bytes of the file parsed so far (always the end of a complete line).
    self._warned = -1  # Offset of the torn line last warned about.
    self.refresh()

  def __contains__(self, key: str) -> bool:
    return key in self._records

  def __len__(self) -> int:
    return len(self._records)

  def get(self, key: str) -> dict[str, Any] | None:
    return self._records.get(key)

  def records(self) -> list[dict[str, Any]]:
    return list(self._records.values())

  def refresh(self) -> None:
    """Reads the records other processes appended since the last read (takes no lock)."""
    if self.path.exists():
      with open(self.path, "rb") as f:
        self._read_tail(f)

  def add(self, record: Record | Mapping[str, Any]) -> None:
    """Appends ``record`` (which must carry a new ``key``) as one fsync'ed line.

    A key another process stored since this store last read the file is kept as stored there
    (the first record of a key wins) and ``record`` is not written.
    """
    if isinstance(record, Record):
      record = record.as_json()
    key = record["key"]
    if key in self._records:
      raise ValueError(f"record {key} is already stored.")
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    if not self.write:
      self._records[key] = json.loads(line)
      return
    self.path.parent.mkdir(parents=True, exist_ok=True)
    created = not self.path.exists()
    with open(self.path, "a+b") as f:
      _lock(f, self.path)
      try:
        torn = self._read_tail(f)
        if torn is not None:  # Nobody is writing (we hold the lock): the line is really torn.
          _set_aside(f, torn, self.path)
        if key not in self._records:
          f.write(line)
          f.flush()
          os.fsync(f.fileno())
          self._offset = f.tell()
          self._records[key] = json.loads(line)  # As a reload reads it: same records, same report.
      finally:
        fcntl.flock(f, fcntl.LOCK_UN)
    if created:
      _fsync_dir(self.path.parent)

  def _read_tail(self, f: BinaryIO) -> int | None:
    """Parses the complete lines after the last read; returns the offset of a torn last line."""
    f.seek(self._offset)
    lines = f.read().split(b"\n")
    rest = lines.pop()  # The bytes after the last newline: empty unless the last line is torn.
    for i, line in enumerate(lines):
      try:
        record = json.loads(line) if line.strip() else None
        if record is not None:
          self._records.setdefault(record["key"], record)
      except (ValueError, KeyError, TypeError) as e:
        if i < len(lines) - 1 or rest:
          raise ValueError(f"{self.path}: the line at byte {self._offset} is not a record ({e}); "
                           "was the results file edited by hand? Fix or remove that line.") from e
        rest = line + b"\n"
        break
      self._offset += len(line) + 1
    if not rest:
      return None
    if self._warned != self._offset:
      self._warned = self._offset
      warnings.warn(f"{self.path}: ignoring a torn last line at byte {self._offset} ({len(rest)} "
                    "bytes; a run killed mid-write?). The next write moves it to "
                    f"{self.path.name}.torn.", stacklevel=3)
    return self._offset


def write_atomic(path: str | os.PathLike[str], data: bytes) -> bool:
  """Writes ``data`` to ``path`` atomically unless the file already holds exactly those bytes.

  The bytes go to a temporary file of this call's own beside ``path`` (two runs may write the same
  file at once), are fsynced and renamed into place. An unchanged file is not touched, so a re-run
  that produces the same outputs works on a read-only workdir. Returns whether it wrote.
  """
  path = Path(path)
  try:
    if path.read_bytes() == data:
      return False
  except OSError:  # Missing (or unreadable): write it.
    pass
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise
  return True


def write_lines(path: Path, lines: Iterable[str]) -> None:
  """Writes ``lines`` to ``path`` atomically (the robust evaluation's per-image records)."""
  write_atomic(path, "".join(line + "\n" for line in lines).encode())


def _lock(f: BinaryIO, path: Path) -> None:
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    print(f"results: waiting for another run writing {path}")
    fcntl.flock(f, fcntl.LOCK_EX)


def _set_aside(f: BinaryIO, offset: int, path: Path) -> None:
  """Moves the bytes of ``f`` after ``offset`` to ``<path>.torn`` and truncates ``f`` there."""
  f.seek(offset)
  torn = f.read()
  with open(path.with_name(path.name + ".torn"), "ab") as side:
    side.write(torn + (b"" if torn.endswith(b"\n") else b"\n"))
    side.flush()
    os.fsync(side.fileno())
  f.truncate(offset)
  f.flush()
  os.fsync(f.fileno())


def _fsync_dir(directory: Path) -> None:
  fd = os.open(directory, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)
