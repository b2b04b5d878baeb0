"""The results store: one JSON record per (model, attack, direction, ε, config hash).

Records live in a JSON-lines file that is rewritten atomically (temp file + fsync + ``os.replace``)
on every append, so a run killed at any point leaves either the old or the new file, never a torn
record; a re-run skips the keys already present.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping


def digest(value: Any) -> str:
  """A short stable hash of a JSON-serialisable value."""
  text = json.dumps(value, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def record_key(model: str, attack: str, direction: str | None, eps: float, num_steps: int,
               config_hash: str, attack_loss: str = "default") -> str:
  """The identity of a record (the default attack loss keeps the keys it had before that axis)."""
  parts = [model, attack, direction, float(eps), int(num_steps), config_hash]
  return digest(parts if attack_loss == "default" else parts + [attack_loss])


class Store:
  """An append-only, atomically written JSON-lines file of records keyed by ``record['key']``.

  With ``write=False`` (the non-writing processes of a multi-host run) records are kept in memory
  only.
  """

  def __init__(self, path: str | Path, write: bool = True):
    self.path = Path(path)
    self.write = write
    self._records: dict[str, dict[str, Any]] = {}
    if self.path.exists():
      for i, line in enumerate(self.path.read_text().splitlines(), 1):
        if not line.strip():
          continue
        try:
          record = json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f"{self.path}:{i} is not valid JSON ({e.msg}); the results file was "
                           "edited by hand? Fix or remove that line.") from e
        self._records[record["key"]] = record

  def __contains__(self, key: str) -> bool:
    return key in self._records

  def __len__(self) -> int:
    return len(self._records)

  def get(self, key: str) -> dict[str, Any] | None:
    return self._records.get(key)

  def records(self) -> list[dict[str, Any]]:
    return list(self._records.values())

  def add(self, record: Mapping[str, Any]) -> None:
    """Appends ``record`` (which must carry a new ``key``) and rewrites the file atomically."""
    if record["key"] in self._records:
      raise ValueError(f"record {record['key']} is already stored.")
    self._records[record["key"]] = dict(record)
    if self.write:
      write_lines(self.path,
                  (json.dumps(r, sort_keys=True) for r in self._records.values()))


def write_lines(path: Path, lines: Iterable[str]) -> None:
  """Writes ``lines`` to ``path`` atomically."""
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
  with open(tmp, "w") as f:
    for line in lines:
      f.write(line + "\n")
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
