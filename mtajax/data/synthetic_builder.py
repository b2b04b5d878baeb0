"""TFDS builder of the embedded benchmark (`mtajax_synthetic`): generated locally, no download."""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from mtajax.data import synthetic
from mtajax.data import tfds_support


@dataclasses.dataclass
class SyntheticConfig(tfds.core.BuilderConfig):
  """Resolution, split sizes and seed of a build of the embedded benchmark."""
  resolution: int = 64
  num_train: int = 2000
  num_test: int = 500
  seed: int = 0


def make_config(resolution: int = 64, num_train: int = 2000, num_test: int = 500,
                seed: int = 0) -> SyntheticConfig:
  """A config named after its parameters, e.g. `r64_n2000-500_s0`."""
  if resolution < 8 or num_train < 1 or num_test < 1 or seed < 0:
    raise ValueError('Need resolution >= 8, num_train >= 1, num_test >= 1 and seed >= 0; got '
                     f'{resolution}, {num_train}, {num_test}, {seed}.')
  return SyntheticConfig(name=f'r{resolution}_n{num_train}-{num_test}_s{seed}',
                         description=f'{resolution}x{resolution} px, {num_train} train and '
                         f'{num_test} test scenes, seed {seed}.',
                         resolution=resolution, num_train=num_train, num_test=num_test, seed=seed)


class MtajaxSynthetic(tfds_support.LocalCodePath, tfds_support.LockedPrepare,
                      tfds.core.GeneratorBasedBuilder):
  """Ray-cast indoor scenes with five dense targets (see `mtajax.data.synthetic`)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  BUILDER_CONFIGS = [make_config(64), make_config(128), make_config(64, 200, 100)]

  def _info(self) -> tfds.core.DatasetInfo:
    r = self.builder_config.resolution
    def tensor(shape, dtype):  # raw bytes: much faster to serialise than int64/float lists
      return tfds.features.Tensor(shape=shape, dtype=dtype, encoding=tfds.features.Encoding.BYTES)

    return tfds.core.DatasetInfo(
        builder=self,
        description=synthetic.__doc__,
        features=tfds.features.FeaturesDict({
            'image': tensor(shape=(r, r, 3), dtype=np.uint8),
            'segment_semantic': tensor(shape=(r, r), dtype=np.uint8),
            'normal': tensor(shape=(r, r, 3), dtype=np.float32),
            'normal_mask': tensor(shape=(r, r), dtype=np.uint8),
            'depth_zbuffer': tensor(shape=(r, r), dtype=np.float32),
            'depth_zbuffer_mask': tensor(shape=(r, r), dtype=np.uint8),
            'keypoints2d': tensor(shape=(r, r), dtype=np.float32),
            'edge_texture': tensor(shape=(r, r), dtype=np.float32),
            'focal_length': tensor(shape=(), dtype=np.float32),
            'scene_index': tensor(shape=(), dtype=np.int64),
        }),
        metadata=tfds.core.MetadataDict(class_names=list(synthetic.CLASS_NAMES)),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Everything is generated locally.
    config = self.builder_config
    return {'train': self._generate_examples('train', config.num_train),
            'test': self._generate_examples('test', config.num_test)}

  def _generate_examples(self, split: str, num: int):
    config = self.builder_config
    for index in range(num):
      scene = synthetic.render(synthetic.scene_seed(config.seed, split, index), config.resolution)
      scene['scene_index'] = np.int64(index)
      yield index, scene
