"""Input pipeline shared by the embedded benchmark, NYUv2 and Tiny-Taskonomy.

`dataset(name, data_dir, split, batch_size=...)` prepares the TFDS dataset when needed (the
embedded benchmark is generated locally; the real ones need `manual_dir`), reads it with
`as_data_source()` (no TensorFlow) and yields batches in the CONVENTIONS.md format. The batch at
step k is a pure function of (seed, k): shuffling permutes the examples with a per-epoch seed, and
augmentation draws from a generator seeded by (seed, epoch, example index), so resuming at step k
(`loader.iterate(k)`) continues exactly. Each process reads only its slice of every global batch.

Evaluation loaders pad (`pad=True`, the default without `train`): the last global batch is filled
up with blank examples (black image, every label ignored) and every batch carries
`example_weight`, float32 (B,), 1 for a real example and 0 for padding (as big_vision does). So
every process gets the same local shape at every step, the evaluation compiles once, and every real
example is seen exactly once; losses and metrics skip weight-0 examples.

A damaged prepared dataset (a missing, truncated or garbled shard file, a broken dataset_info.json)
is one ValueError naming its folder and the fix (delete it and rerun). `dataset` checks each shard
file's record count against dataset_info.json and reads a split that `Loader.record` keeps whole
when it builds the loader, so no step uses a partly readable split; in a larger split a garbled
record fails when it is read.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
import dataclasses
import math
from pathlib import Path
from typing import Any

from array_record.python import array_record_module
import jax
import numpy as np
import tensorflow_datasets as tfds

from mtajax.data import nyuv2
from mtajax.data import preprocess
from mtajax.data import synthetic
from mtajax.data import synthetic_builder
from mtajax.data import taskonomy

DATASETS = ('synthetic', 'nyuv2', 'taskonomy')


@dataclasses.dataclass(frozen=True)
class Options:
  """Preprocessing options; the defaults reproduce the reference loaders (spec §7).

  Attributes:
    crop_size: (H, W) of batches; default 321x321 (NYUv2), 224x224 (Taskonomy), native (synthetic).
    nyu_normal_encoding: 'reference' gives the raw uint8 BGR values of the reference loader as
      float32 (Q26, 255 = invalid, no mask); 'unit' gives unit (x, y, z) normals plus 'normal_mask'.
    flip_negates_normal_x: negate the normals' x component on horizontal flips. The reference
      Taskonomy loader does; its NYUv2 loader does not (Q26) — set False to reproduce that.
    taskonomy_ignore_unlabeled: label Taskonomy's unlabeled pixels 255 (ignored) instead of merging
      them into class 0 as the reference does (Q23).
    scale_range: range of the train-time random scale factor.
  """
  crop_size: tuple[int, int] | None = None
  nyu_normal_encoding: str = 'reference'
  flip_negates_normal_x: bool = True
  taskonomy_ignore_unlabeled: bool = False
  scale_range: tuple[float, float] = (0.5, 1.5)

  def __post_init__(self):
    if self.nyu_normal_encoding not in ('reference', 'unit'):
      raise ValueError(f"nyu_normal_encoding must be 'reference' or 'unit', got "
                       f'{self.nyu_normal_encoding!r}.')
    if self.crop_size is not None and (len(self.crop_size) != 2 or min(self.crop_size) < 1):
      raise ValueError(f'crop_size must be (H, W) with positive sizes, got {self.crop_size}.')


def _damaged(name: str, folder: str | Path, problem: str) -> ValueError:
  """The one-line error for a damaged prepared dataset, naming its folder and the fix."""
  problem = (problem.strip().splitlines() or ['unreadable'])[0]
  return ValueError(f'The prepared {name} dataset in {folder} is damaged ({problem}); delete '
                    f'{folder} and rerun to prepare it again.')


def _builder(name: str, data_dir: str | Path, config: Any) -> tfds.core.DatasetBuilder:
  kwargs = dict(data_dir=str(data_dir), file_format='array_record')
  if name == 'synthetic':
    if config is None:
      config = synthetic_builder.make_config()
    elif hasattr(config, 'to_dict'):  # an ml_collections ConfigDict
      config = synthetic_builder.make_config(**config.to_dict())
    elif isinstance(config, Mapping):
      config = synthetic_builder.make_config(**config)
    predefined = {c.name for c in synthetic_builder.MtajaxSynthetic.BUILDER_CONFIGS}
    if config.name in predefined:  # TFDS refuses a custom config named like a predefined one.
      config = config.name
    kwargs['config'] = config
  cls = {'synthetic': synthetic_builder.MtajaxSynthetic, 'nyuv2': nyuv2.MtajaxNyuv2,
         'taskonomy': taskonomy.MtajaxTaskonomy}[name]
  try:  # Reads dataset_info.json when the dataset is prepared.
    return cls(**kwargs)
  except Exception as e:  # pylint: disable=broad-except  (protobuf, JSON and TFDS errors alike)
    config = kwargs.get('config')
    folder = Path(data_dir, cls.name, getattr(config, 'name', config) or '', str(cls.VERSION))
    if not (folder / 'dataset_info.json').exists():
      raise
    raise _damaged(name, folder, f'dataset_info.json: {e}') from None


def _check_split(name: str, builder: tfds.core.DatasetBuilder, split: str) -> None:
  """Checks that every shard file of `split` is there and holds the records that
  dataset_info.json lists (a truncated file holds fewer); a garbled record shows when read."""
  info = builder.info.splits[split]
  for path, length in zip(info.filepaths, info.shard_lengths):
    if not path.exists():
      raise _damaged(name, builder.data_dir, f'missing file {path.name}')
    try:
      reader = array_record_module.ArrayRecordReader(str(path), options='readahead_buffer_size:0')
      count = reader.num_records()
      reader.close()  # Raises when the file's index did not read (a truncated file).
    except RuntimeError as e:
      detail = f'{path.name} is truncated or garbled' + (f': {e}' if str(e) else '')
      raise _damaged(name, builder.data_dir, detail) from None
    if count != length:
      raise _damaged(name, builder.data_dir, f'{path.name} holds {count} of its {length} records')


class _Records(Sequence):
  """A split's decoded records; a read error (a garbled file) names the damaged dataset."""

  def __init__(self, name: str, builder: tfds.core.DatasetBuilder, split: str):
    self.name, self.folder = name, builder.data_dir
    self.source = builder.as_data_source(split=split)

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> Mapping[str, Any]:
    try:
      return self.source[index]
    except (OSError, RuntimeError, ValueError) as e:
      raise _damaged(self.name, self.folder, f'record {index}: {e}') from None


def prepare(name: str, data_dir: str | Path, manual_dir: str | Path | None = None,
            config: Any = None) -> tfds.core.DatasetBuilder:
  """Returns the builder of `name`, preparing the dataset first if it is not there yet."""
  if name not in DATASETS:
    raise ValueError(f'Unknown dataset {name!r}; use one of {DATASETS}.')
  builder = _builder(name, data_dir, config)
  if not builder.is_prepared():
    if name != 'synthetic':
      if manual_dir is None:
        raise ValueError(f'{name} is not prepared in {data_dir}; pass manual_dir=<folder with the '
                         'downloaded files> (see its MANUAL_DOWNLOAD_INSTRUCTIONS).')
      (nyuv2.detect_layout if name == 'nyuv2' else taskonomy.find_root)(Path(manual_dir))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=None if manual_dir is None else str(manual_dir)))
  return builder


def default_tasks(name: str) -> tuple[str, ...]:
  return nyuv2.TASKS if name == 'nyuv2' else synthetic.TASKS


def num_classes(name: str) -> int:
  return {'synthetic': synthetic.NUM_CLASSES, 'nyuv2': nyuv2.NUM_CLASSES,
          'taskonomy': taskonomy.NUM_CLASSES}[name]


CACHE_BYTES = 256 * 2**20  # Loader.record keeps a split's decoded records up to this size.


class Loader:
  """Deterministic, resumable, per-process batches of one split."""

  def __init__(self, name: str, source: Sequence[Mapping[str, np.ndarray]], *,
               batch_size: int, tasks: Sequence[str], train: bool, seed: int,
               options: Options, shuffle: bool, drop_remainder: bool,
               process_index: int, process_count: int, class_weights: np.ndarray | None,
               pad: bool = False):
    if batch_size < 1 or batch_size % process_count:
      raise ValueError(f'batch_size {batch_size} must be a positive multiple of the process '
                       f'count {process_count}.')
    if not 0 <= process_index < process_count:
      raise ValueError(f'process_index {process_index} outside [0, {process_count}).')
    unknown = set(tasks) - set(default_tasks(name))
    if unknown or not tasks:
      raise ValueError(f'Tasks {sorted(unknown) or "()"} are not available for {name}; choose '
                       f'from {default_tasks(name)}.')
    self.name, self.source, self.tasks = name, source, tuple(tasks)
    self.batch_size, self.train, self.seed, self.options = batch_size, train, seed, options
    self.shuffle, self.drop_remainder, self.pad = shuffle, drop_remainder, pad
    self.process_index, self.process_count = process_index, process_count
    self.local_batch_size = batch_size // process_count
    self.num_classes = num_classes(name)
    self.class_weights = class_weights
    self.num_examples = len(source)
    count = self.num_examples / batch_size
    self.steps_per_epoch = math.floor(count) if drop_remainder else math.ceil(count)
    if self.steps_per_epoch == 0:
      raise ValueError(f'{self.num_examples} examples give no full batch of {batch_size}; lower '
                       'batch_size or set drop_remainder=False.')
    if pad and drop_remainder:
      raise ValueError('pad=True fills up the last batch that drop_remainder=True drops; set one '
                       'of them to False.')
    if not (pad or drop_remainder) and process_count > 1 and self.num_examples % batch_size:
      raise ValueError(f'{self.num_examples} examples in batches of {batch_size} leave a short '
                       f'last batch that does not split equally over {process_count} processes; '
                       'set pad=True (the evaluation default) or drop_remainder=True.')
    self._blank: dict[str, np.ndarray] | None = None
    self._records: dict[int, dict[str, np.ndarray]] | None = None  # decoded once (small splits)
    self._cache_checked = False

  @property
  def crop_size(self) -> tuple[int, int] | None:
    if self.options.crop_size is not None:
      return tuple(self.options.crop_size)
    return {'nyuv2': (321, 321), 'taskonomy': (224, 224)}.get(self.name)

  def indices(self, step: int) -> np.ndarray:
    """Source indices of this process's share of the global batch at `step` (-1: padding).

    Process p gets positions [p L, (p + 1) L) of the global batch, L = `local_batch_size`; with
    `pad` the global batch is filled up to `batch_size` with -1 first.
    """
    epoch, pos = divmod(step, self.steps_per_epoch)
    order = np.arange(self.num_examples)
    if self.shuffle:
      order = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
    batch = order[pos * self.batch_size:(pos + 1) * self.batch_size]
    if self.pad:
      batch = np.pad(batch, (0, self.batch_size - len(batch)), constant_values=-1)
    share = self.local_batch_size
    return batch[self.process_index * share:(self.process_index + 1) * share]

  def record(self, index: int) -> dict[str, np.ndarray]:
    """The decoded source record ``index`` (read-only arrays). A split whose decoded records fit
    in ``CACHE_BYTES`` (the embedded benchmark) is decoded whole at the first use and kept: a
    training run reads each record once per epoch, decoding costs about a third of an example's
    preparation, and a damaged record stops the run before any step uses the split."""
    if self._records is not None:
      return self._records[index]
    rec = self._decode(index)
    if not self._cache_checked:
      if sum(v.nbytes for v in rec.values()) * self.num_examples <= CACHE_BYTES:
        self._records = {i: rec if i == index else self._decode(i)
                         for i in range(self.num_examples)}
      self._cache_checked = True
    return rec

  def _decode(self, index: int) -> dict[str, np.ndarray]:
    keys = {'image'} | set(self.tasks) | {f'{t}_mask' for t in self.tasks}
    rec = {k: np.asarray(v) for k, v in self.source[index].items() if k in keys}
    for v in rec.values():
      v.setflags(write=False)
    return rec

  def example(self, index: int, epoch: int = 0) -> dict[str, np.ndarray]:
    """One preprocessed example (deterministic in (seed, epoch, index))."""
    ex = dict(self.record(int(index)))
    normal_x, negate, pad_depth_zero = 0, 'unit', False
    if self.name == 'nyuv2':
      pad_depth_zero = True
      ex.pop('depth_zbuffer_mask', None)
      if self.options.nyu_normal_encoding == 'reference' and 'normal' in ex:
        ex['normal'] = preprocess.normal_to_reference_nyu(ex['normal'])
        ex.pop('normal_mask')
        normal_x, negate = 2, 'uint8'
    if self.name == 'taskonomy':
      ex['image'] = ex['image'].astype(np.float32)  # the reference resizes a float image.
      mask = ex.pop('segment_semantic_mask', None)
      if self.options.taskonomy_ignore_unlabeled and mask is not None:
        ex['segment_semantic'] = np.where(mask > 0, ex['segment_semantic'], 255).astype(np.uint8)
    crop = self.crop_size or ex['image'].shape[:2]
    if self.train:
      rng = np.random.default_rng([self.seed, epoch, int(index)])
      ex = preprocess.train_transform(
          ex, crop, rng, normal_x_channel=normal_x if self.options.flip_negates_normal_x else None,
          normal_negate=negate, pad_depth_with_zero=pad_depth_zero,
          scale_range=self.options.scale_range)
    else:
      ex = preprocess.test_transform(ex, crop)
    out = {'image': preprocess.encode_image(ex.pop('image'))}
    for key, value in ex.items():
      if key == 'segment_semantic':
        out[key] = value.astype(np.int32)
      elif key.endswith('_mask'):
        out[key] = (value == 1).astype(np.float32)
      else:
        out[key] = value.astype(np.float32)
    return out

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """The local batch at global step `step`."""
    if not self.train and step >= self.steps_per_epoch:
      raise ValueError(f'Step {step} is past the single pass of {self.steps_per_epoch} steps of an '
                       'evaluation loader; use train=True to repeat.')
    epoch = step // self.steps_per_epoch
    indices = self.indices(step)
    examples = [self.example(i, epoch) if i >= 0 else self.blank() for i in indices]
    batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
    if self.pad:
      batch['example_weight'] = (indices >= 0).astype(np.float32)
    return batch

  def blank(self) -> dict[str, np.ndarray]:
    """The padding example: shaped like example 0, black image, every label ignored."""
    if self._blank is None:
      self._blank = preprocess.blank_like(self.example(0), pad_depth_with_zero=self.name == 'nyuv2')
    return self._blank

  def iterate(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Batches from `start_step` on: forever when training, to the end of the pass otherwise."""
    step = start_step
    while self.train or step < self.steps_per_epoch:
      yield self.batch(step)
      step += 1

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self.iterate(0)

  def __len__(self) -> int:
    return self.steps_per_epoch


def dataset(name: str, data_dir: str | Path, split: str = 'test', *, batch_size: int,
            tasks: Sequence[str] | None = None, train: bool = False, seed: int = 0,
            shuffle: bool | None = None, drop_remainder: bool | None = None,
            manual_dir: str | Path | None = None, config: Any = None,
            options: Options | None = None, process_index: int | None = None,
            process_count: int | None = None, pad: bool | None = None) -> Loader:
  """Loader of `split` of dataset `name` ('synthetic', 'nyuv2' or 'taskonomy').

  Args:
    name: which dataset; switching datasets is this one argument (plus `manual_dir` once).
    data_dir: TFDS data directory (prepared datasets are reused).
    split: 'train', 'test' (and 'val' / 'test_small' where the manual data define them).
    batch_size: global batch size (divisible by the process count).
    tasks: task subset in CONVENTIONS.md order; default all tasks of the dataset (synthetic:
      `synthetic.NYU_LIKE_TASKS` gives the 3-task NYUv2-like view).
    train: apply the train-time augmentation and repeat forever; else one pass, test transform.
    seed: seed of the shuffling and of the augmentation.
    shuffle: default `train`.
    drop_remainder: default `train`.
    pad: fill the last batch up with weight-0 blank examples and add `example_weight` to every
      batch; default `not train` (see the module docstring).
    manual_dir: folder with the downloaded files (NYUv2, Taskonomy), needed to prepare once.
    config: synthetic only: a `SyntheticConfig` or kwargs of `synthetic_builder.make_config`.
    options: preprocessing options (`Options`).
    process_index: default `jax.process_index()`.
    process_count: default `jax.process_count()`.
  """
  builder = prepare(name, data_dir, manual_dir, config)
  if not builder.info.splits:
    raise _damaged(name, builder.data_dir, 'no splits: dataset_info.json missing or incomplete')
  if split not in builder.info.splits:
    raise ValueError(f'Split {split!r} not in {name}; available: {sorted(builder.info.splits)}.')
  _check_split(name, builder, split)
  weights = None
  if name == 'taskonomy':
    try:
      weights = np.asarray(builder.info.metadata['semseg_prior_factor'], dtype=np.float32)
    except (OSError, ValueError, KeyError) as e:  # a missing, broken or incomplete metadata.json
      raise _damaged(name, builder.data_dir, f'metadata.json: {e}') from None
  loader = Loader(
      name, _Records(name, builder, split), batch_size=batch_size,
      tasks=default_tasks(name) if tasks is None else tasks, train=train, seed=seed,
      options=options or Options(), shuffle=train if shuffle is None else shuffle,
      drop_remainder=train if drop_remainder is None else drop_remainder,
      process_index=jax.process_index() if process_index is None else process_index,
      process_count=jax.process_count() if process_count is None else process_count,
      class_weights=weights, pad=not train if pad is None else pad)
  loader.record(0)  # Reads a small split whole: a garbled record fails here, before any use.
  return loader
