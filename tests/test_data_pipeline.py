"""Input pipeline: reference encoding, transforms, determinism, resumption, sharding, and damaged
prepared datasets."""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from mtajax.data import pipeline
from mtajax.data import preprocess
from mtajax.data import resize

CONFIG = dict(resolution=32, num_train=20, num_test=6, seed=1)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp('tfds')
  pipeline.prepare('synthetic', path, config=CONFIG)
  return path


def _loader(data_dir, **kw):
  kw.setdefault('batch_size', 4)
  return pipeline.dataset('synthetic', data_dir, kw.pop('split', 'train'), config=CONFIG, **kw)


def test_reference_constants():
  np.testing.assert_allclose(preprocess.BGR_MEAN, [104.00698793, 116.66876762, 122.67891434])
  low, high = preprocess.input_bounds()
  assert low.shape == high.shape == (3,)
  np.testing.assert_allclose(low, [-104.00698793, -116.66876762, -122.67891434], rtol=1e-6)
  np.testing.assert_allclose(high, [150.99301207, 138.33123238, 132.32108566], rtol=1e-6)
  rgb = np.array([[[10, 20, 30]]], np.uint8)
  np.testing.assert_allclose(preprocess.encode_image(rgb)[0, 0],
                             [30 - 104.00698793, 20 - 116.66876762, 10 - 122.67891434], rtol=1e-6)
  np.testing.assert_allclose(preprocess.decode_image(preprocess.encode_image(rgb)), rgb, atol=1e-4)


def test_deterministic_and_resumable(data_dir):
  a = _loader(data_dir, train=True, seed=3)
  b = _loader(data_dir, train=True, seed=3)
  steps = [batch for _, batch in zip(range(7), a.iterate(0))]  # crosses an epoch (5 steps)
  resumed = next(b.iterate(6))
  for key in resumed:
    np.testing.assert_array_equal(resumed[key], steps[6][key])
  other = _loader(data_dir, train=True, seed=4).batch(6)
  assert not np.array_equal(other['image'], steps[6]['image'])
  assert not np.array_equal(steps[0]['image'], steps[5]['image'])  # reshuffled next epoch


def test_process_sharding_partitions_the_global_batch(data_dir):
  whole = _loader(data_dir, train=True, seed=0, process_index=0, process_count=1)
  parts = [_loader(data_dir, train=True, seed=0, process_index=p, process_count=2)
           for p in range(2)]
  for step in (0, 3):
    local = [p.batch(step) for p in parts]
    assert local[0]['image'].shape[0] == 2
    glob = whole.batch(step)
    for key in glob:
      np.testing.assert_array_equal(np.concatenate([l[key] for l in local]), glob[key])
  with pytest.raises(ValueError, match='multiple of the process count'):
    _loader(data_dir, batch_size=3, process_index=0, process_count=2)


def test_eval_is_one_ordered_pass(data_dir):
  loader = _loader(data_dir, split='test', batch_size=4)
  batches = list(loader)
  assert [b['image'].shape[0] for b in batches] == [4, 4]  # padded: one shape, one compile
  np.testing.assert_array_equal(loader.indices(0), np.arange(4))
  np.testing.assert_array_equal(loader.indices(1), [4, 5, -1, -1])
  np.testing.assert_array_equal(batches[1]['example_weight'], [1, 1, 0, 0])
  unpadded = list(_loader(data_dir, split='test', batch_size=4, pad=False))
  assert [b['image'].shape[0] for b in unpadded] == [4, 2] and 'example_weight' not in unpadded[0]
  for key, value in unpadded[1].items():
    np.testing.assert_array_equal(batches[1][key][:2], value)
  with pytest.raises(ValueError, match='past the single pass'):
    loader.batch(2)


@pytest.mark.parametrize('processes', [2, 4])
def test_padded_eval_gives_every_process_equal_shapes_and_each_example_once(data_dir, processes):
  # 6 test images in batches of 4 over 4 processes: the ceil-sized shares of the short last batch
  # gave process 2 an empty batch (IndexError) and the processes unequal shapes.
  parts = [_loader(data_dir, split='test', batch_size=4, process_index=p,
                   process_count=processes) for p in range(processes)]
  whole = list(_loader(data_dir, split='test', batch_size=4, pad=False))
  assert {len(p) for p in parts} == {2}
  seen = []
  for step, want in enumerate(whole):
    local = [p.batch(step) for p in parts]
    assert {tuple(jax_shape(l)) for l in local} == {tuple(jax_shape(local[0]))}
    glob = {k: np.concatenate([l[k] for l in local]) for k in local[0]}
    real = glob['example_weight'] == 1
    assert set(np.unique(glob['example_weight'])) <= {0.0, 1.0}
    seen += [int(i) for p in parts for i in p.indices(step) if i >= 0]
    for key, value in want.items():
      np.testing.assert_array_equal(glob[key][real], value)
    blank = {k: v[~real] for k, v in glob.items()}
    if (~real).any():  # padding: black image, no valid label anywhere
      np.testing.assert_allclose(preprocess.decode_image(blank['image']), 0, atol=1e-4)
      assert (blank['segment_semantic'] == 255).all() and (blank['normal'] == 255).all()
      assert (blank['depth_zbuffer_mask'] == 0).all()
  assert sorted(seen) == list(range(6))


def jax_shape(batch):
  return [(k, v.shape, v.dtype) for k, v in sorted(batch.items())]


def test_unpadded_short_last_batch_over_processes_is_refused(data_dir):
  with pytest.raises(ValueError, match='pad=True'):
    _loader(data_dir, split='test', batch_size=4, pad=False, process_index=0, process_count=2)
  with pytest.raises(ValueError, match='drop_remainder'):
    _loader(data_dir, split='test', batch_size=4, pad=True, drop_remainder=True)


def test_train_crop_pads_labels_with_ignore(data_dir):
  options = pipeline.Options(crop_size=(80, 80), scale_range=(1.0, 1.0 + 1e-9))
  batch = _loader(data_dir, train=True, options=options).batch(0)
  corner = (slice(None), slice(0, 2), slice(0, 2))  # 32x32 centred in 80x80: corners are padding
  assert (batch['segment_semantic'][corner] == 255).all()
  assert (batch['depth_zbuffer'][corner] == 255).all() and (batch['normal'][corner] == 255).all()
  assert (batch['depth_zbuffer_mask'][corner] == 0).all()
  np.testing.assert_allclose(batch['image'][corner], np.broadcast_to(-preprocess.BGR_MEAN,
                                                                      (4, 2, 2, 3)))


def test_train_batch_equals_transform_with_the_example_seed(data_dir):
  loader = _loader(data_dir, train=True, seed=5)
  step = 7
  batch = loader.batch(step)
  epoch = step // loader.steps_per_epoch
  i = int(loader.indices(step)[1])
  raw = {k: np.asarray(v) for k, v in loader.source[i].items()
         if k in ('image', 'segment_semantic', 'normal', 'normal_mask')}
  ex = preprocess.train_transform(raw, (32, 32), np.random.default_rng([5, epoch, i]),
                                  normal_x_channel=0)
  np.testing.assert_array_equal(batch['segment_semantic'][1], ex['segment_semantic'])
  np.testing.assert_allclose(batch['normal'][1], ex['normal'])
  np.testing.assert_allclose(batch['image'][1], preprocess.encode_image(ex['image']))


def test_small_split_is_decoded_once_and_gives_the_same_batches(data_dir, monkeypatch):
  reads = []
  read = pipeline._Records.__getitem__  # pylint: disable=protected-access

  def counting(self, i):
    reads.append(i)
    return read(self, i)

  monkeypatch.setattr(pipeline._Records, '__getitem__', counting)  # pylint: disable=protected-access
  cached = _loader(data_dir, train=True, seed=2)
  assert sorted(reads) == list(range(cached.num_examples))  # read whole when built
  steps = 2 * cached.steps_per_epoch  # two epochs: every record used twice
  batches = [cached.batch(s) for s in range(steps)]
  assert sorted(reads) == list(range(cached.num_examples))  # each record decoded once
  assert not cached.record(0)['image'].flags.writeable  # the kept records cannot be altered
  monkeypatch.setattr(pipeline, 'CACHE_BYTES', 0)  # too big to keep: decoded at every use
  fresh = _loader(data_dir, train=True, seed=2)
  reads.clear()
  for s, batch in enumerate(batches):
    for key, value in fresh.batch(s).items():
      np.testing.assert_array_equal(value, batch[key])
  assert len(reads) == steps * 4


def test_flip_negates_normal_x_of_valid_pixels_only():
  rng = np.random.default_rng(0)
  n = rng.normal(size=(4, 5, 3))
  n /= np.linalg.norm(n, axis=-1, keepdims=True)
  mask = np.ones((4, 5), np.uint8)
  mask[0, 0] = 0
  ex = {'normal': n.astype(np.float32), 'normal_mask': mask}
  out = preprocess.flip_example(ex, 0, 'unit')
  np.testing.assert_allclose(out['normal'][..., 0][mask[:, ::-1] == 1],
                             -n[:, ::-1, 0][mask[:, ::-1] == 1])
  np.testing.assert_allclose(out['normal'][0, -1], n[0, 0])  # invalid pixel: only moved
  np.testing.assert_allclose(out['normal'][..., 1:], n[:, ::-1, 1:])
  raw = preprocess.normal_to_reference_nyu(n)
  raw[1, 1, 0] = 255.0
  flipped = preprocess.flip_example({'normal': raw}, 2, 'uint8')['normal']
  np.testing.assert_array_equal(flipped[..., 2][1, -2], raw[1, 1, 2])  # invalid: untouched
  np.testing.assert_array_equal(flipped[0, :, 2], 255 - raw[0, ::-1, 2])
  kept = preprocess.flip_example({'normal': raw}, None, 'uint8')['normal']
  np.testing.assert_array_equal(kept, raw[:, ::-1])


def _nyu_adashare(root, h=24, w=32):
  nyu = root / 'NYUv2'
  for sub in ('img', 'seg', 'normal_mask', 'depth'):
    (nyu / sub).mkdir(parents=True)
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  seg = rng.integers(0, 40, (h, w), dtype=np.uint8)
  normal = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
  depth = rng.uniform(0.5, 5, (h, w)).astype(np.float32)
  Image.fromarray(image).save(nyu / 'img/0.png')
  Image.fromarray(seg).save(nyu / 'seg/0.png')
  Image.fromarray(normal).save(nyu / 'normal_mask/0.png')
  np.save(nyu / 'depth/0.npy', depth)
  entry = ['img/0.png', 'seg/0.png', 'normal_mask/0.png', 'depth/0.npy']
  (nyu / 'nyu_v2_3task.json').write_text(json.dumps({'train': [entry], 'test': [entry]}))
  return image, seg, normal, depth


def test_nyuv2_reference_test_transform(tmp_path):
  image, seg, normal, depth = _nyu_adashare(tmp_path / 'manual')
  loader = pipeline.dataset('nyuv2', tmp_path / 'data', 'test', batch_size=1,
                            manual_dir=tmp_path / 'manual')
  batch = loader.batch(0)
  assert set(batch) == {'image', 'segment_semantic', 'normal', 'depth_zbuffer',
                        'example_weight'}  # no masks
  # Image: OpenCV-bilinear on the uint8 BGR image to 321x321, then minus the mean.
  bgr = image[..., ::-1]
  expected = resize.resize_bilinear(np.ascontiguousarray(bgr), (321, 321)).astype(np.float32)
  np.testing.assert_allclose(batch['image'][0], expected - preprocess.BGR_MEAN, atol=1e-4)
  rows = np.minimum(np.arange(321) * 24 // 321, 23)
  cols = np.minimum(np.arange(321) * 32 // 321, 31)
  np.testing.assert_array_equal(batch['segment_semantic'][0], seg[rows][:, cols])
  np.testing.assert_array_equal(batch['depth_zbuffer'][0], depth[rows][:, cols])
  # Normals: raw PNG bytes in OpenCV's BGR order (Q26).
  np.testing.assert_array_equal(batch['normal'][0], normal[rows][:, cols][..., ::-1])
  unit = pipeline.dataset('nyuv2', tmp_path / 'data', 'test', batch_size=1,
                          options=pipeline.Options(nyu_normal_encoding='unit')).batch(0)
  np.testing.assert_allclose(unit['normal'][0], normal[rows][:, cols] / 127.5 - 1, atol=1e-6)
  assert 'normal_mask' in unit
  train = pipeline.dataset('nyuv2', tmp_path / 'data', 'train', batch_size=1, train=True).batch(0)
  assert 'example_weight' not in train
  blank = preprocess.blank_like({k: v[0] for k, v in batch.items()}, pad_depth_with_zero=True)
  assert (blank['depth_zbuffer'] == 0).all() and (blank['normal'] == 255).all()  # nothing valid
  assert train['image'].shape == (1, 321, 321, 3)
  pad = train['depth_zbuffer'][0][train['segment_semantic'][0] == 255]
  assert pad.size and (pad == 0).all()  # NYUv2 pads depth with 0 (invalid), labels with 255


def test_bad_arguments(data_dir):
  with pytest.raises(ValueError, match='Unknown dataset'):
    pipeline.dataset('cityscapes', data_dir, batch_size=1)
  with pytest.raises(ValueError, match='Split'):
    _loader(data_dir, split='validation')
  with pytest.raises(ValueError, match='not available'):
    _loader(data_dir, tasks=('segment_semantic', 'depth_euclidean'))
  with pytest.raises(ValueError, match='nyu_normal_encoding'):
    pipeline.Options(nyu_normal_encoding='rgb')


def test_kwargs_equal_to_a_predefined_config_select_it(tmp_path):
  loader = pipeline.dataset('synthetic', tmp_path, 'test', batch_size=50,
                            config=dict(resolution=64, num_train=200, num_test=100))
  assert loader.num_examples == 100


# A damaged prepared dataset: one line naming the dataset, its folder and the fix; no partial split.
ROOT = pathlib.Path(__file__).resolve().parents[1]


SMALL_CONFIG = dict(resolution=32, num_train=8, num_test=4, seed=1)  # the smoke resolution, few scenes


FOLDER = 'mtajax_synthetic/r32_n8-4_s1/1.0.0'


TRAIN = 'mtajax_synthetic-train.array_record-00000-of-00001'


@pytest.fixture(scope='module')
def intact(tmp_path_factory):
  path = tmp_path_factory.mktemp('tfds')
  pipeline.prepare('synthetic', path, config=SMALL_CONFIG)
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
    next(iter(pipeline.dataset('synthetic', data_dir, 'train', batch_size=2, config=SMALL_CONFIG)))
  assert '\n' not in str(e.value)
  assert str(e.value).startswith(f'The prepared synthetic dataset in {folder} is damaged (')
  assert str(e.value).endswith(f'delete {folder} and rerun to prepare it again.')
  assert _files(folder) == before  # Nothing altered.


def test_the_fix_restores_identical_records(intact, tmp_path):
  data_dir = _damaged_copy(intact, tmp_path, 'garbled')
  with pytest.raises(ValueError, match='is damaged'):
    pipeline.dataset('synthetic', data_dir, 'train', batch_size=2, config=SMALL_CONFIG).record(0)
  shutil.rmtree(data_dir / FOLDER)  # The fix the error names.
  rebuilt = pipeline.dataset('synthetic', data_dir, 'train', batch_size=2, config=SMALL_CONFIG)
  original = pipeline.dataset('synthetic', intact, 'train', batch_size=2, config=SMALL_CONFIG)
  for i in range(original.num_examples):
    for key, value in original.record(i).items():
      np.testing.assert_array_equal(rebuilt.record(i)[key], value)


def test_garbled_record_of_a_large_split_fails_when_read(intact, tmp_path, monkeypatch):
  monkeypatch.setattr(pipeline, 'CACHE_BYTES', 0)  # too big to read whole: each record on use
  loader = pipeline.dataset('synthetic', _damaged_copy(intact, tmp_path, 'garbled'), 'train',
                            batch_size=2, config=SMALL_CONFIG)
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
