"""Per-resource locks between runs: one run at a time trains a model or builds a dataset.

:func:`exclusive` holds an exclusive ``fcntl.flock`` on a lock file (local disks, and NFS with
lockd), so a second run on the same resource waits, saying so once, and then finds the resource
finished. The kernel releases the lock of a process that dies, even by SIGKILL; the lock file
holds no state and stays. Locks are re-entrant within a process. :func:`model` is the lock of a
model folder for every process of a (multi-host) run: only the writing process takes the file lock,
the others wait for it at a barrier.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from typing import Iterator

from mtajax import parallel

_held: dict[str, int] = {}  # Lock files this process holds: how many times entered.


def lock_file(directory: str | Path) -> Path:
  """The lock file of ``directory``: ``<directory>.lock``, next to it."""
  directory = Path(directory)
  return directory.with_name(directory.name + ".lock")


@contextlib.contextmanager
def exclusive(path: str | Path, waiting: str, take: bool = True) -> Iterator[None]:
  """Holds the lock file ``path``; prints ``waiting`` once if another process holds it.

  ``take=False`` only marks the lock held in this process (the non-writing processes of a
  multi-host run, which wait at a barrier instead). Where the lock file cannot be created (a
  read-only workdir) this run can write nothing there and reads only finished data, so it goes
  on without the lock.
  """
  name = str(Path(path).absolute())
  fd = None
  if take and name not in _held:
    try:
      Path(name).parent.mkdir(parents=True, exist_ok=True)
      fd = os.open(name, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
      if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
        raise
  try:
    if fd is not None:
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        print(waiting, flush=True)
        fcntl.flock(fd, fcntl.LOCK_EX)
    _held[name] = _held.get(name, 0) + 1
    try:
      yield
    finally:
      _held[name] -= 1
      if not _held[name]:
        del _held[name]
  finally:
    if fd is not None:
      os.close(fd)  # Releases the lock.


@contextlib.contextmanager
def model(model_dir: str | Path) -> Iterator[None]:
  """Holds the lock of the model folder ``model_dir`` (named after its model id) in every process.

  Every process of a run calls it: process 0 takes the file lock, then all meet at a barrier, so
  no process looks at the model before the lock is held; they meet again before it is released.
  Nested calls (``ensure_trained`` around ``loop.train``) add no barrier.
  """
  model_dir = Path(model_dir)
  path = lock_file(model_dir)
  nested = str(path.absolute()) in _held
  with exclusive(path, f"waiting for another run training {model_dir.name}",
                 take=parallel.is_writer()):
    if not nested:
      parallel.sync(f"mtajax-lock-taken {model_dir.name}")
    yield
    if not nested:
      parallel.sync(f"mtajax-lock-release {model_dir.name}")
