"""NYUv2 builder on fixture files in the real formats plus the real metadata files."""
import json
from pathlib import Path
import shutil

import h5py
import numpy as np
from PIL import Image
import pytest
import scipy.io
import tensorflow_datasets as tfds

from mtajax.data import nyuv2

META = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'nyuv2-meta'
H, W = 12, 16  # fixture images (real: 480x640)


def _need_meta():
  if not (META / 'classMapping40.mat').is_file():
    pytest.skip(f'real NYUv2 metadata not found at {META} (CI clones the repo next to shared/).')


def _write_mat73(path, arrays):
  """An HDF5 file with the 512-byte MATLAB 7.3 header, arrays stored MATLAB-transposed."""
  with h5py.File(path, 'w', userblock_size=512) as f:
    for name, value in arrays.items():
      f.create_dataset(name, data=value)
  header = b'MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: fixture HDF5 schema 1.00 .'
  with open(path, 'r+b') as f:
    f.write(header.ljust(116, b' ') + b'\x00' * 8 + b'\x00\x02IM' + b'\x00' * (512 - 128))


def _scene(i):
  rng = np.random.default_rng(i)
  image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
  labels = rng.integers(0, 895, (H, W)).astype(np.uint16)
  depth = rng.uniform(0.5, 9.0, (H, W)).astype(np.float32)
  depth[0, 0] = 0.0
  normal_png = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
  normal_valid = rng.uniform(size=(H, W)) > 0.2
  return image, labels, depth, normal_png, normal_valid


def _official_dir(root, n=6, train=(1, 3, 4), test=(2, 5, 6)):
  _need_meta()
  root.mkdir(parents=True, exist_ok=True)
  scenes = [_scene(i) for i in range(n)]
  _write_mat73(root / 'nyu_depth_v2_labeled.mat', {
      'images': np.stack([s[0].transpose(2, 1, 0) for s in scenes]),  # (N, 3, W, H) uint8
      'depths': np.stack([s[2].T for s in scenes]),  # (N, W, H) float32
      'rawDepths': np.stack([s[2].T for s in scenes]),
      'labels': np.stack([s[1].T for s in scenes]),  # (N, W, H) uint16
      'instances': np.zeros((n, W, H), np.uint8),
  })
  shutil.copy(META / 'classMapping40.mat', root)
  scipy.io.savemat(root / 'splits.mat', {'trainNdxs': np.array(train, np.uint16)[:, None],
                                         'testNdxs': np.array(test, np.uint16)[:, None]})
  for sub in ('normals', 'masks'):
    (root / 'normals_gt' / sub).mkdir(parents=True, exist_ok=True)
  for i, s in enumerate(scenes):
    Image.fromarray(s[3]).save(root / f'normals_gt/normals/{i + 1:04d}.png')
    Image.fromarray(s[4].astype(np.uint8) * 255).save(root / f'normals_gt/masks/{i + 1:04d}.png')
  return scenes


def _prepare(manual_dir, data_dir):
  builder = nyuv2.MtajaxNyuv2(data_dir=str(data_dir), file_format='array_record')
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder


def test_real_metadata_files():
  _need_meta()
  splits = nyuv2.read_splits(META / 'splits.mat')
  assert len(splits['train']) == 795 and len(splits['test']) == 654
  together = np.concatenate([splits['train'], splits['test']])
  assert sorted(together.tolist()) == list(range(1449))
  lut = nyuv2.read_class_mapping(META / 'classMapping40.mat')
  mapping = scipy.io.loadmat(META / 'classMapping40.mat')['mapClass'].ravel()
  assert lut.shape == (895,) and lut[0] == 255
  np.testing.assert_array_equal(lut[1:], mapping - 1)
  names = scipy.io.loadmat(META / 'classMapping40.mat')['className'].ravel()
  assert len(names) == nyuv2.NUM_CLASSES


def test_official_layout(tmp_path):
  scenes = _official_dir(tmp_path / 'manual')
  builder = _prepare(tmp_path / 'manual', tmp_path / 'data')
  mapping = scipy.io.loadmat(META / 'classMapping40.mat')['mapClass'].ravel()
  for split, indices in (('train', (1, 3, 4)), ('test', (2, 5, 6))):
    source = builder.as_data_source(split=split)
    assert len(source) == len(indices)
    by_image = {bytes(source[k]['image']): source[k] for k in range(len(source))}
    for idx in indices:
      image, labels, depth, normal_png, normal_valid = scenes[idx - 1]
      ex = by_image[bytes(image)]  # the image comes back upright, (H, W, 3) RGB
      expected = np.where(labels > 0, mapping[np.maximum(labels, 1) - 1] - 1, 255)
      np.testing.assert_array_equal(ex['segment_semantic'], expected)
      np.testing.assert_array_equal(ex['depth_zbuffer'], depth)
      np.testing.assert_array_equal(ex['depth_zbuffer_mask'], depth > 3e-5)
      np.testing.assert_array_equal(ex['normal_mask'], normal_valid)
      np.testing.assert_allclose(ex['normal'][normal_valid],
                                 normal_png[normal_valid] / 255.0 * 2 - 1, atol=1e-6)


def test_adashare_layout(tmp_path):
  root = tmp_path / 'manual' / 'NYUv2'
  for sub in ('img', 'seg', 'normal_mask', 'depth'):
    (root / sub).mkdir(parents=True)
  entries, truth = [], []
  for i in range(3):
    image, _, depth, normal_png, _ = _scene(10 + i)
    seg = np.random.default_rng(i).integers(0, 40, (H, W)).astype(np.uint8)
    seg[0] = 255
    normal_png[1, 1] = (255, 3, 4)
    Image.fromarray(image).save(root / f'img/{i}.png')
    Image.fromarray(seg).save(root / f'seg/{i}.png')
    Image.fromarray(normal_png).save(root / f'normal_mask/{i}.png')
    np.save(root / f'depth/{i}.npy', depth)
    entries.append([f'img/{i}.png', f'seg/{i}.png', f'normal_mask/{i}.png', f'depth/{i}.npy'])
    truth.append((image, seg, depth, normal_png))
  (root / 'nyu_v2_3task.json').write_text(json.dumps({'train': entries[:2], 'test': entries[2:]}))
  builder = _prepare(tmp_path / 'manual', tmp_path / 'data')
  ex = builder.as_data_source(split='test')[0]
  image, seg, depth, normal_png = truth[2]
  np.testing.assert_array_equal(ex['image'], image)
  np.testing.assert_array_equal(ex['segment_semantic'], seg)
  np.testing.assert_array_equal(ex['depth_zbuffer'], depth)
  np.testing.assert_array_equal(ex['normal_mask'], normal_png.max(-1) < 255)
  assert ex['normal_mask'][1, 1] == 0
  # Lossless: the stored unit normals give back the PNG bytes.
  np.testing.assert_array_equal(np.rint((ex['normal'] + 1) * 127.5), normal_png)


def test_missing_and_malformed_manual_dirs(tmp_path):
  with pytest.raises(ValueError, match='does not exist') as e:
    nyuv2.detect_layout(tmp_path / 'absent')
  assert '\n' not in str(e.value)
  (tmp_path / 'partial').mkdir()
  (tmp_path / 'partial' / 'splits.mat').write_bytes(b'')
  with pytest.raises(ValueError, match='nyu_depth_v2_labeled.mat') as e:
    nyuv2.detect_layout(tmp_path / 'partial')
  assert '\n' not in str(e.value) and "'splits.mat'" not in str(e.value)
  with pytest.raises(ValueError, match='Manual directory missing or empty'):
    _prepare(tmp_path / 'empty_absent', tmp_path / 'data')
  bad = tmp_path / 'bad'
  _official_dir(bad)
  (bad / 'normals_gt/normals/0002.png').unlink()
  with pytest.raises(ValueError, match='0002.png'):
    _prepare(bad, tmp_path / 'data2')
