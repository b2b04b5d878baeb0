"""The embedded benchmark as a TFDS dataset: offline build, byte-identical rebuilds, views."""
import hashlib
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from mtajax.data import pipeline
from mtajax.data import synthetic
from mtajax.data import synthetic_builder

CONFIG = dict(resolution=32, num_train=24, num_test=8, seed=7)


def _build(data_dir):
  builder = synthetic_builder.MtajaxSynthetic(config=synthetic_builder.make_config(**CONFIG),
                                              data_dir=str(data_dir), file_format='array_record')
  builder.download_and_prepare()
  return builder


def _digests(root):
  return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(Path(root).rglob('*.array_record*'))}


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  return _build(tmp_path_factory.mktemp('a'))


def test_builds_offline_and_matches_renderer(built):
  source = tfds.data_source(f'mtajax_synthetic/{built.builder_config.name}', split='test',
                            data_dir=built.data_dir.split('/mtajax_synthetic')[0])
  assert len(source) == CONFIG['num_test']
  for i in range(len(source)):
    ex = source[i]
    ref = synthetic.render(synthetic.scene_seed(CONFIG['seed'], 'test', int(ex['scene_index'])),
                           CONFIG['resolution'])
    for key in synthetic.TASKS + ('image', 'normal_mask', 'depth_zbuffer_mask'):
      np.testing.assert_array_equal(ex[key], ref[key])


def test_two_builds_are_byte_identical(built, tmp_path):
  first = _digests(built.data_dir)
  second = _digests(_build(tmp_path).data_dir)
  assert len(first) == 2 and first == second


def test_nyu_like_and_taskonomy_like_views(built, tmp_path):
  data_dir = built.data_dir.split('/mtajax_synthetic')[0]
  three = pipeline.dataset('synthetic', data_dir, 'test', batch_size=4, config=CONFIG,
                           tasks=synthetic.NYU_LIKE_TASKS)
  five = pipeline.dataset('synthetic', data_dir, 'test', batch_size=4, config=CONFIG)
  b3, b5 = three.batch(0), five.batch(0)
  assert set(b3) == {'image', 'segment_semantic', 'normal', 'normal_mask', 'depth_zbuffer',
                     'depth_zbuffer_mask', 'example_weight'}  # Evaluation batches are padded.
  assert set(b5) == set(b3) | {'keypoints2d', 'edge_texture'}
  assert b5['image'].shape == (4, 32, 32, 3) and b5['segment_semantic'].dtype == np.int32
  for key in b3:
    np.testing.assert_array_equal(b3[key], b5[key])
  assert three.num_classes == synthetic.NUM_CLASSES


def test_bad_config():
  with pytest.raises(ValueError, match='resolution'):
    synthetic_builder.make_config(resolution=4)
