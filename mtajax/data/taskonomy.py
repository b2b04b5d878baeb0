"""TFDS builder `mtajax_taskonomy`: Tiny-Taskonomy in the reference folder layout, manual download.

Manual directory (spec §7.2): `Taskonomy/taskonomy.json` maps each split (`train`, `test`,
`test_small`) to `[rgb, segment_semantic, normal, depth_zbuffer, keypoints2d, edge_texture]` PNG
paths, relative to `Taskonomy/train` for `train` and to `Taskonomy/test` otherwise, plus
`Taskonomy/semseg_prior_factor.npy` (17 class weights, kept in `info.metadata`). PNG formats:
rgb 8-bit RGB, segment_semantic 8-bit (0 = unlabeled, 1..17), normal 8-bit RGB, depth_zbuffer,
keypoints2d and edge_texture 16-bit grayscale.

Each example is decoded like the reference `Taskonomy.__getitem__`, all maps resized to 256x256
with the reference nearest rule: segmentation `max(seg, 1) - 1` (17 classes, unlabeled merged into
class 0, Q23) with 'segment_semantic_mask' = seg > 0; normal 2v/255 - 1; depth
log(1 + d) / log(2^16) with mask d < 64500 (also 'normal_mask'); keypoints2d
2 clip(k / 2^16, 0, 0.005) / 0.005 - 1; edge_texture 2 clip(e / 2^16, 0, 0.08) / 0.08 - 1.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from mtajax.data import resize
from mtajax.data import tfds_support

NUM_CLASSES = 17
TASKS = ('segment_semantic', 'normal', 'depth_zbuffer', 'keypoints2d', 'edge_texture')
RESOLUTION = 256
SPLITS = ('train', 'test', 'test_small')
DEPTH_INVALID = 64500
KEYPOINTS_CLIP = 0.005
EDGE_CLIP = 0.08

MANUAL_DOWNLOAD_INSTRUCTIONS = """
Put Tiny-Taskonomy into the manual directory as Taskonomy/taskonomy.json (split -> list of
[rgb, segment_semantic, normal, depth_zbuffer, keypoints2d, edge_texture] PNG paths relative to
Taskonomy/train or Taskonomy/test), Taskonomy/semseg_prior_factor.npy and the PNG folders
(https://github.com/StanfordVL/taskonomy; split files: the AdaShare release).
"""


def find_root(manual_dir: Path) -> Path:
  """The `Taskonomy` folder; one-line ValueError naming what is missing otherwise."""
  manual_dir = Path(manual_dir)
  root = manual_dir if (manual_dir / 'taskonomy.json').is_file() else manual_dir / 'Taskonomy'
  missing = [str(root / f) for f in ('taskonomy.json', 'semseg_prior_factor.npy')
             if not (root / f).is_file()]
  if missing:
    raise ValueError(f'Taskonomy manual directory {manual_dir} lacks {missing}; see '
                     'MANUAL_DOWNLOAD_INSTRUCTIONS.')
  return root


def read_prior_factor(path: Path) -> np.ndarray:
  weights = np.load(path).astype(np.float32).ravel()
  if weights.shape != (NUM_CLASSES,) or not np.all(np.isfinite(weights)):
    raise ValueError(f'{path} must hold {NUM_CLASSES} finite class weights, got {weights.shape}.')
  return weights


def _read(path: Path, bits: int) -> np.ndarray:
  if not path.is_file():
    raise ValueError(f'Missing file {path}.')
  with Image.open(path) as im:
    arr = np.asarray(im)
  expected = np.uint16 if bits == 16 else np.uint8
  if arr.dtype.itemsize != np.dtype(expected).itemsize:
    raise ValueError(f'{path} is {arr.dtype}, expected a {bits}-bit PNG.')
  return arr.astype(expected)


def _to256(x: np.ndarray) -> np.ndarray:
  return resize.resize_nearest(x, (RESOLUTION, RESOLUTION))


def decode_example(rgb: np.ndarray, seg: np.ndarray, normal: np.ndarray, depth: np.ndarray,
                   keypoints: np.ndarray, edges: np.ndarray) -> dict[str, np.ndarray]:
  """Raw PNG arrays of one view -> the stored features (the reference per-item decoding)."""
  seg = _to256(seg if seg.ndim == 2 else seg[..., 0])
  depth_raw = _to256(depth.astype(np.float64))
  depth_mask = (depth_raw < DEPTH_INVALID).astype(np.uint8)
  k = np.clip(_to256(keypoints) / 2.0 ** 16, 0.0, KEYPOINTS_CLIP) / KEYPOINTS_CLIP
  e = np.clip(_to256(edges) / 2.0 ** 16, 0.0, EDGE_CLIP) / EDGE_CLIP
  return {
      'image': _to256(rgb[..., :3]),
      'segment_semantic': (np.maximum(seg, 1) - 1).astype(np.uint8),
      'segment_semantic_mask': (seg > 0).astype(np.uint8),
      'normal': (_to256(normal[..., :3]) / 255.0 * 2 - 1).astype(np.float32),
      'normal_mask': depth_mask,
      'depth_zbuffer': (np.log1p(depth_raw) / np.log(2.0 ** 16)).astype(np.float32),
      'depth_zbuffer_mask': depth_mask,
      'keypoints2d': (2 * k - 1).astype(np.float32),
      'edge_texture': (2 * e - 1).astype(np.float32),
  }


def _examples(root: Path, split: str, entries: list[list[str]]):
  """Decoded examples of one split, keyed by their position in taskonomy.json."""
  base = root / ('train' if split == 'train' else 'test')
  for key, paths in enumerate(entries):
    if len(paths) != 6:
      raise ValueError(f'taskonomy.json entry {key} of {split!r} has {len(paths)} paths, need 6.')
    rgb, seg, normal, depth, keypoints, edges = (base / p for p in paths)
    yield key, decode_example(_read(rgb, 8), _read(seg, 8), _read(normal, 8), _read(depth, 16),
                              _read(keypoints, 16), _read(edges, 16))


class MtajaxTaskonomy(tfds_support.LocalCodePath, tfds_support.LockedPrepare,
                      tfds.core.GeneratorBasedBuilder):
  """Tiny-Taskonomy, five tasks with masks at 256x256 (manual download)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    def tensor(shape, dtype):  # raw bytes: much faster to serialise than int64/float lists
      return tfds.features.Tensor(shape=shape, dtype=dtype, encoding=tfds.features.Encoding.BYTES)

    hw = (RESOLUTION, RESOLUTION)
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': tensor(shape=hw + (3,), dtype=np.uint8),
            'segment_semantic': tensor(shape=hw, dtype=np.uint8),
            'segment_semantic_mask': tensor(shape=hw, dtype=np.uint8),
            'normal': tensor(shape=hw + (3,), dtype=np.float32),
            'normal_mask': tensor(shape=hw, dtype=np.uint8),
            'depth_zbuffer': tensor(shape=hw, dtype=np.float32),
            'depth_zbuffer_mask': tensor(shape=hw, dtype=np.uint8),
            'keypoints2d': tensor(shape=hw, dtype=np.float32),
            'edge_texture': tensor(shape=hw, dtype=np.float32),
        }),
        metadata=tfds.core.MetadataDict(),
        homepage='http://taskonomy.stanford.edu/',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = find_root(tfds_support.manual_dir_of(dl_manager))
    self.info.metadata['semseg_prior_factor'] = read_prior_factor(
        root / 'semseg_prior_factor.npy').tolist()
    with open(root / 'taskonomy.json') as f:
      splits = json.load(f)
    unknown = set(splits) - set(SPLITS)
    if unknown:
      raise ValueError(f'taskonomy.json has unknown splits {sorted(unknown)}; use {SPLITS}.')
    return {s: self._generate_examples(root, s, entries) for s, entries in splits.items()}

  def _generate_examples(self, root: Path, split: str, entries: list[list[str]]):
    yield from _examples(root, split, entries)
