"""What the mtajax TFDS builders share."""
from __future__ import annotations

from pathlib import Path

from etils import epath
import tensorflow_datasets as tfds

from mtajax import locks


class LocalCodePath:
  """Mixin pointing TFDS at the builder's own source file.

  TFDS 4.9.10 locates a packaged builder's source through `importlib_resources`, which it does not
  install; giving the path directly avoids that import (and there is no checksums file to find).
  """

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(__import__(cls.__module__, fromlist=['_']).__file__)


class LockedPrepare:
  """Mixin building the dataset under its lock (``<data_dir>.lock``, ``mtajax.locks``).

  Two runs that would build one dataset at once build it once: the second waits, then reads what
  the first built (TFDS alone renames its build onto the first's and fails).
  """

  def download_and_prepare(self, *args, **kwargs) -> None:
    waiting = f'waiting for another run building {self.info.full_name} in {self.data_dir_root}'
    with locks.exclusive(locks.lock_file(self.data_dir), waiting):
      built = self.is_prepared()  # By another run since this builder was made.
      super().download_and_prepare(*args, **kwargs)
      if built:
        self.info.read_from_directory(self.data_dir)


def manual_dir_of(dl_manager: tfds.download.DownloadManager) -> Path:
  """The manual directory, with a one-line error when it is missing or empty."""
  try:
    return Path(dl_manager.manual_dir)
  except AssertionError as e:
    raise ValueError(f'Manual directory missing or empty: {str(e).splitlines()[0]}') from None
