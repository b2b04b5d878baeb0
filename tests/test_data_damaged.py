"""A damaged prepared dataset: one line naming the dataset, its folder and the fix; no partial split."""
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from mtajax.data import pipeline

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = dict(resolution=32, num_train=8, num_test=4, seed=1)  # the smoke resolution, few scenes
FOLDER = 'mtajax_synthetic/r32_n8-4_s1/1.0.0'
TRAIN = 'mtajax_synthetic-train.array_record-00000-of-00001'


@pytest.fixture(scope='module')
def intact(tmp_path_factory):
  path = tmp_path_factory.mktemp('tfds')
  pipeline.prepare('synthetic', path, config=CONFIG)
  return path


def _garble(path: pathlib.Path) -> None:  # flips 8 bytes in the middle of the records
  data = bytearray(path.read_bytes())
  middle = len(data) // 2
  data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])
  path.write_bytes(bytes(data))


def _truncate(path: pathlib.Path, size: int) -> None:
  path.write_bytes(path.read_bytes()[:size])


DAMAGES = {
    'garbled': lambda d: _garble(d / TRAIN),
    'truncated': lambda d: _truncate(d / TRAIN, (d / TRAIN).stat().st_size // 2),
    'truncated_at_64k': lambda d: _truncate(d / TRAIN, 2**16),
    'broken_info': lambda d: _truncate(d / 'dataset_info.json', 200),
    'info_without_splits': lambda d: (d / 'dataset_info.json').write_text(
        re.sub(r'"splits": \[.*\],', '', (d / 'dataset_info.json').read_text(), flags=re.S)),
    'missing_shard': lambda d: (d / TRAIN).unlink(),
}


def _damaged_copy(intact: pathlib.Path, tmp_path: pathlib.Path, damage: str) -> pathlib.Path:
  data_dir = tmp_path / 'tfds'
  shutil.copytree(intact, data_dir)
  DAMAGES[damage](data_dir / FOLDER)
  return data_dir


def _files(folder: pathlib.Path) -> dict[str, bytes]:
  return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.mark.parametrize('damage', DAMAGES)
def test_damaged_dataset_is_one_line_with_the_folder_and_the_fix(intact, tmp_path, damage):
  data_dir = _damaged_copy(intact, tmp_path, damage)
  folder = data_dir / FOLDER
  before = _files(folder)
  with pytest.raises(ValueError) as e:
    # An evaluation pass whose first batch (records 0, 1) is intact: the whole split is checked.
    next(iter(pipeline.dataset('synthetic', data_dir, 'train', batch_size=2, config=CONFIG)))
  assert '\n' not in str(e.value)
  assert str(e.value).startswith(f'The prepared synthetic dataset in {folder} is damaged (')
  assert str(e.value).endswith(f'delete {folder} and rerun to prepare it again.')
  assert _files(folder) == before  # Nothing altered.


def test_the_fix_restores_identical_records(intact, tmp_path):
  data_dir = _damaged_copy(intact, tmp_path, 'garbled')
  with pytest.raises(ValueError, match='is damaged'):
    pipeline.dataset('synthetic', data_dir, 'train', batch_size=2, config=CONFIG).record(0)
  shutil.rmtree(data_dir / FOLDER)  # The fix the error names.
  rebuilt = pipeline.dataset('synthetic', data_dir, 'train', batch_size=2, config=CONFIG)
  original = pipeline.dataset('synthetic', intact, 'train', batch_size=2, config=CONFIG)
  for i in range(original.num_examples):
    for key, value in original.record(i).items():
      np.testing.assert_array_equal(rebuilt.record(i)[key], value)


def test_garbled_record_of_a_large_split_fails_when_read(intact, tmp_path, monkeypatch):
  monkeypatch.setattr(pipeline, 'CACHE_BYTES', 0)  # too big to read whole: each record on use
  loader = pipeline.dataset('synthetic', _damaged_copy(intact, tmp_path, 'garbled'), 'train',
                            batch_size=2, config=CONFIG)
  with pytest.raises(ValueError, match=r'is damaged \(record \d: Corrupted'):
    list(loader)


def test_main_job_on_a_damaged_dataset_is_one_error_line_and_status_2(intact, tmp_path):
  data_dir = _damaged_copy(intact, tmp_path, 'garbled')
  args = ['--config', f'{ROOT}/configs/quickstart.py:smoke', f'--config.workdir={tmp_path}/w',
          f'--config.train.data_dir={data_dir}', '--config.train.data_config.num_train=8',
          '--config.train.data_config.num_test=4', '--config.train.data_config.seed=1']
  env = {**os.environ, 'PYTHONPATH': str(ROOT), 'MTAJAX_JAX_CACHE': str(tmp_path / 'cache')}
  out = subprocess.run([sys.executable, '-m', 'mtajax.run', 'train', *args], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=300, check=False)
  lines = out.stderr.strip().splitlines()
  assert out.returncode == 2 and len(lines) == 1, out.stderr[-2000:]
  assert lines[0].startswith(f'error: The prepared synthetic dataset in {data_dir / FOLDER} is '
                             'damaged (record '), lines
  assert lines[0].endswith(f'delete {data_dir / FOLDER} and rerun to prepare it again.'), lines
