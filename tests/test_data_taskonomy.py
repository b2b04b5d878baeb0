"""Tiny-Taskonomy builder on fixture PNGs with the real bit depths; loader on tfds mock data."""
import json
import struct

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from mtajax.data import pipeline
from mtajax.data import taskonomy

S = 32  # fixture size (real: 512x512, the loader brings everything to 256x256)


def _png_bit_depth(path):
  with open(path, 'rb') as f:
    head = f.read(33)
  assert head[:8] == b'\x89PNG\r\n\x1a\n'
  return struct.unpack('B', head[24:25])[0]


def _view(rng):
  return {
      'rgb': rng.integers(0, 256, (S, S, 3), dtype=np.uint8),
      'segment_semantic': rng.integers(0, 18, (S, S), dtype=np.uint8),
      'normal': rng.integers(0, 256, (S, S, 3), dtype=np.uint8),
      'depth_zbuffer': np.where(rng.uniform(size=(S, S)) < 0.1, 65535,
                                rng.integers(0, 64500, (S, S))).astype(np.uint16),
      'keypoints2d': rng.integers(0, 600, (S, S)).astype(np.uint16),
      'edge_texture': rng.integers(0, 8000, (S, S)).astype(np.uint16),
  }


def _manual_dir(root, splits=(('train', 2), ('test_small', 2))):
  tdir = root / 'Taskonomy'
  rng = np.random.default_rng(0)
  spec, views = {}, {}
  for split, n in splits:
    base = tdir / ('train' if split == 'train' else 'test')
    spec[split], views[split] = [], []
    for i in range(n):
      view = _view(rng)
      paths = []
      for task, arr in view.items():
        rel = f'bldg/{task}/point_{split}_{i}_{task}.png'
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(base / rel)
        assert _png_bit_depth(base / rel) == (16 if arr.dtype == np.uint16 else 8)
        paths.append(rel)
      spec[split].append(paths)
      views[split].append(view)
  (tdir / 'taskonomy.json').write_text(json.dumps(spec))
  np.save(tdir / 'semseg_prior_factor.npy', np.linspace(0.5, 2.0, 17))
  return views


def _nearest256(x):
  idx = np.minimum(np.arange(256) * x.shape[0] // 256, x.shape[0] - 1)
  return x[idx][:, idx]


def test_builder_decodes_like_the_reference(tmp_path):
  views = _manual_dir(tmp_path / 'manual')
  builder = taskonomy.MtajaxTaskonomy(data_dir=str(tmp_path / 'data'), file_format='array_record')
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / 'manual')))
  assert sorted(builder.info.splits) == ['test_small', 'train']
  np.testing.assert_allclose(builder.info.metadata['semseg_prior_factor'],
                             np.linspace(0.5, 2.0, 17), rtol=1e-6)
  source = builder.as_data_source(split='test_small')
  by_image = {bytes(source[k]['image']): source[k] for k in range(len(source))}
  for view in views['test_small']:
    ex = by_image[bytes(_nearest256(view['rgb']))]
    seg = _nearest256(view['segment_semantic']).astype(int)
    np.testing.assert_array_equal(ex['segment_semantic'], np.where(seg == 0, 1, seg) - 1)
    np.testing.assert_array_equal(ex['segment_semantic_mask'], seg > 0)
    np.testing.assert_allclose(ex['normal'], _nearest256(view['normal']) / 255 * 2 - 1,
                               atol=1e-6)
    d = _nearest256(view['depth_zbuffer']).astype(float)
    np.testing.assert_allclose(ex['depth_zbuffer'], np.log(1 + d) / np.log(65536), rtol=1e-6)
    np.testing.assert_array_equal(ex['depth_zbuffer_mask'], d < 64500)
    np.testing.assert_array_equal(ex['normal_mask'], d < 64500)
    k = np.clip(_nearest256(view['keypoints2d']) / 65536, 0, 0.005) / 0.005
    np.testing.assert_allclose(ex['keypoints2d'], 2 * k - 1, atol=1e-6)
    e = np.clip(_nearest256(view['edge_texture']) / 65536, 0, 0.08) / 0.08
    np.testing.assert_allclose(ex['edge_texture'], 2 * e - 1, atol=1e-6)
  loader = pipeline.dataset('taskonomy', tmp_path / 'data', 'test_small', batch_size=2)
  batch = loader.batch(0)
  assert batch['image'].shape == (2, 224, 224, 3) and batch['keypoints2d'].shape == (2, 224, 224)
  np.testing.assert_allclose(loader.class_weights, np.linspace(0.5, 2.0, 17), rtol=1e-6)


def test_missing_and_malformed_manual_dirs(tmp_path):
  with pytest.raises(ValueError, match='taskonomy.json') as e:
    taskonomy.find_root(tmp_path)
  assert '\n' not in str(e.value)
  _manual_dir(tmp_path / 'm', splits=(('train', 1),))
  (tmp_path / 'm/Taskonomy/semseg_prior_factor.npy').unlink()
  with pytest.raises(ValueError, match='semseg_prior_factor.npy'):
    taskonomy.find_root(tmp_path / 'm')
  with pytest.raises(ValueError, match='not prepared.*manual_dir'):
    pipeline.dataset('taskonomy', tmp_path / 'data', 'test', batch_size=1)
  with pytest.raises(ValueError, match='semseg_prior_factor.npy'):
    pipeline.dataset('taskonomy', tmp_path / 'data', 'test', batch_size=1,
                     manual_dir=tmp_path / 'm')
  np.save(tmp_path / 'm/Taskonomy/semseg_prior_factor.npy', np.ones(17))
  Image.fromarray(np.zeros((S, S), np.uint8)).save(
      next((tmp_path / 'm/Taskonomy/train').rglob('*depth_zbuffer.png')))
  with pytest.raises(ValueError, match='16-bit'):
    pipeline.dataset('taskonomy', tmp_path / 'data', 'train', batch_size=1,
                     manual_dir=tmp_path / 'm')


def test_loader_on_mock_data(tmp_path):
  with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
    source = tfds.data_source('mtajax_taskonomy', split='test', data_dir=str(tmp_path))
    loader = pipeline.Loader('taskonomy', source, batch_size=4, tasks=taskonomy.TASKS,
                             train=True, seed=0, options=pipeline.Options(), shuffle=True,
                             drop_remainder=True, process_index=0, process_count=1,
                             class_weights=None)
    batch = loader.batch(3)
  assert batch['image'].shape == (4, 224, 224, 3)
  # Masks of normal and depth only: the reference seg loss ignores its mask (Q23).
  assert {k for k in batch if k.endswith('_mask')} == {'normal_mask', 'depth_zbuffer_mask'}
  assert set(np.unique(batch['normal_mask'])) <= {0.0, 1.0}
