"""TFDS builder `mtajax_nyuv2`: NYU Depth v2 labeled set (795 train / 654 test), manual download.

Two manual-directory layouts are accepted (the first found wins):
  * official: `nyu_depth_v2_labeled.mat` (MATLAB v7.3 = HDF5; h5py sees `images` uint8
    (N, 3, W, H), `depths` float32 (N, W, H) in metres, `labels` uint16 (N, W, H) with 894 classes,
    0 = unlabeled), `classMapping40.mat` (`mapClass`, 894 -> 1..40), `splits.mat` (`trainNdxs`,
    `testNdxs`, 1-based) and the precomputed normals of Eigen & Fergus (ICCV 2015,
    `normals_gt.tgz` extracted): `normals_gt/normals/%04d.png` (8-bit RGB, n = 2v/255 - 1) and
    `normals_gt/masks/%04d.png` (nonzero = valid), numbered by the 1-based image index;
  * AdaShare (the reference loader, spec §7.1): `NYUv2/nyu_v2_3task.json` mapping each split to
    `[img, seg, normal, depth]` paths relative to `NYUv2/` (`img/*.png`, `seg/*.png` 0..39/255,
    `normal_mask/*.png` 8-bit RGB, 255 in a channel = invalid, `depth/*.npy` metres).
Features: 'image' uint8 RGB, 'segment_semantic' uint8 (40 classes, 255 = void), 'depth_zbuffer'
float32 metres with 'depth_zbuffer_mask' (depth > 3e-5), 'normal' float32 in [-1, 1] with
'normal_mask'.
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
from PIL import Image
import scipy.io
import tensorflow_datasets as tfds

from mtajax.data import tfds_support

NUM_CLASSES = 40
TASKS = ('segment_semantic', 'normal', 'depth_zbuffer')
DEPTH_VALID_MIN = 3e-5
OFFICIAL_FILES = ('nyu_depth_v2_labeled.mat', 'classMapping40.mat', 'splits.mat',
                  'normals_gt/normals', 'normals_gt/masks')
ADASHARE_JSON = 'NYUv2/nyu_v2_3task.json'

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
Put into the manual directory EITHER the official files
  {', '.join(OFFICIAL_FILES)}
(https://cs.nyu.edu/~silberman/datasets/nyu_depth_v2.html: nyu_depth_v2_labeled.mat, and from the
toolbox/benchmark pages classMapping40.mat and splits.mat; normals: Eigen & Fergus normals_gt.tgz
extracted to normals_gt/), OR the AdaShare preprocessed release as {ADASHARE_JSON} with its
img/, seg/, normal_mask/ and depth/ folders next to the json.
"""


def detect_layout(manual_dir: Path) -> str:
  """'official' or 'adashare'; one-line ValueError naming what is missing otherwise."""
  manual_dir = Path(manual_dir)
  if not manual_dir.is_dir():
    raise ValueError(f'NYUv2 manual directory {manual_dir} does not exist; create it with the '
                     f'official files {OFFICIAL_FILES} or {ADASHARE_JSON}.')
  if (manual_dir / ADASHARE_JSON).is_file():
    return 'adashare'
  missing = [f for f in OFFICIAL_FILES if not (manual_dir / f).exists()]
  if missing:
    raise ValueError(f'NYUv2 manual directory {manual_dir} lacks {missing} (official layout) and '
                     f'{ADASHARE_JSON} (AdaShare layout); see MANUAL_DOWNLOAD_INSTRUCTIONS.')
  return 'official'


def read_splits(path: Path) -> dict[str, np.ndarray]:
  """0-based image indices of the official 795/654 split from `splits.mat`."""
  mat = scipy.io.loadmat(path)
  if 'trainNdxs' not in mat or 'testNdxs' not in mat:
    raise ValueError(f'{path} has no trainNdxs/testNdxs; use the official splits.mat.')
  return {'train': mat['trainNdxs'].ravel().astype(np.int64) - 1,
          'test': mat['testNdxs'].ravel().astype(np.int64) - 1}


def read_class_mapping(path: Path) -> np.ndarray:
  """Lookup table (895,) from raw 894-class labels (0 = unlabeled) to 0..39, 255 = void."""
  mat = scipy.io.loadmat(path)
  if 'mapClass' not in mat:
    raise ValueError(f'{path} has no mapClass; use the official classMapping40.mat.')
  mapping = mat['mapClass'].ravel().astype(np.int64)
  if mapping.size != 894 or mapping.min() < 1 or mapping.max() > NUM_CLASSES:
    raise ValueError(f'{path}: mapClass must map 894 classes to 1..40, got {mapping.size} entries '
                     f'in [{mapping.min()}, {mapping.max()}].')
  return np.concatenate([[255], mapping - 1]).astype(np.uint8)


def _read_png(path: Path) -> np.ndarray:
  if not path.is_file():
    raise ValueError(f'Missing file {path}.')
  with Image.open(path) as im:
    return np.asarray(im)


def _official_examples(manual_dir: Path, split: str):
  indices = read_splits(manual_dir / 'splits.mat')[split]
  lut = read_class_mapping(manual_dir / 'classMapping40.mat')
  with h5py.File(manual_dir / 'nyu_depth_v2_labeled.mat', 'r') as f:
    for name in ('images', 'depths', 'labels'):
      if name not in f:
        raise ValueError(f'nyu_depth_v2_labeled.mat has no dataset {name!r}; use the official '
                         'labeled file.')
    num = f['images'].shape[0]
    if indices.max() >= num:
      raise ValueError(f'splits.mat refers to image {indices.max() + 1} but the .mat holds {num}.')
    for i in indices:
      labels = f['labels'][i].T
      normal_png = _read_png(manual_dir / f'normals_gt/normals/{i + 1:04d}.png')[..., :3]
      normal_valid = _read_png(manual_dir / f'normals_gt/masks/{i + 1:04d}.png')
      normal_valid = (normal_valid.reshape(normal_valid.shape[:2] + (-1,))[..., 0] > 0)
      normal = np.where(normal_valid[..., None], normal_png / 127.5 - 1.0, 1.0)
      depth = f['depths'][i].T.astype(np.float32)
      yield int(i), {
          'image': np.ascontiguousarray(f['images'][i].transpose(2, 1, 0)),
          'segment_semantic': lut[labels],
          'depth_zbuffer': depth,
          'depth_zbuffer_mask': (depth > DEPTH_VALID_MIN).astype(np.uint8),
          'normal': normal.astype(np.float32),
          'normal_mask': normal_valid.astype(np.uint8),
      }


def _adashare_examples(manual_dir: Path, split: str):
  root = manual_dir / 'NYUv2'
  with open(root / 'nyu_v2_3task.json') as f:
    entries = json.load(f)[split]
  for key, (img, seg, normal, depth) in enumerate(entries):
    normal_raw = _read_png(root / normal)[..., :3]
    depth_path = root / depth
    if not depth_path.is_file():
      raise ValueError(f'Missing file {depth_path}.')
    depth_m = np.load(depth_path).astype(np.float32).reshape(normal_raw.shape[:2])
    yield key, {
        'image': _read_png(root / img)[..., :3],
        'segment_semantic': _read_png(root / seg).astype(np.uint8),
        'depth_zbuffer': depth_m,
        'depth_zbuffer_mask': (depth_m > DEPTH_VALID_MIN).astype(np.uint8),
        'normal': (normal_raw / 127.5 - 1.0).astype(np.float32),
        'normal_mask': (normal_raw.max(-1) < 255).astype(np.uint8),
    }


class MtajaxNyuv2(tfds_support.LocalCodePath, tfds_support.LockedPrepare,
                  tfds.core.GeneratorBasedBuilder):
  """NYUv2 with 40-class segmentation, depth and surface normals (manual download)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    def tensor(shape, dtype):  # variable image sizes need an encoded tensor
      return tfds.features.Tensor(shape=shape, dtype=dtype, encoding=tfds.features.Encoding.ZLIB)

    hw = (None, None)
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': tensor(shape=hw + (3,), dtype=np.uint8),
            'segment_semantic': tensor(shape=hw, dtype=np.uint8),
            'depth_zbuffer': tensor(shape=hw, dtype=np.float32),
            'depth_zbuffer_mask': tensor(shape=hw, dtype=np.uint8),
            'normal': tensor(shape=hw + (3,), dtype=np.float32),
            'normal_mask': tensor(shape=hw, dtype=np.uint8),
        }),
        homepage='https://cs.nyu.edu/~silberman/datasets/nyu_depth_v2.html',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = tfds_support.manual_dir_of(dl_manager)
    if detect_layout(manual_dir) == 'adashare':
      with open(manual_dir / ADASHARE_JSON) as f:
        splits = [s for s in json.load(f) if s in ('train', 'val', 'test')]
      return {s: self._generate_examples(manual_dir, s, 'adashare') for s in splits}
    return {s: self._generate_examples(manual_dir, s, 'official') for s in ('train', 'test')}

  def _generate_examples(self, manual_dir: Path, split: str, layout: str):
    reader = _adashare_examples if layout == 'adashare' else _official_examples
    yield from reader(manual_dir, split)
