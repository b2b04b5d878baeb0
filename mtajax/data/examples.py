"""Figure of a few embedded-benchmark scenes with their five targets (docs/synthetic_examples.png).

Run `python -m mtajax.data.examples [out.png]`.
"""
from __future__ import annotations

import sys

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from mtajax.data import synthetic


def save_examples(path: str, num_scenes: int = 4, resolution: int = 128, seed: int = 0) -> None:
  """Renders `num_scenes` test scenes and saves a grid image | targets to `path`."""
  columns = ('image', 'segment_semantic', 'normal', 'depth_zbuffer', 'keypoints2d',
             'edge_texture')
  fig, axes = plt.subplots(num_scenes, len(columns), figsize=(2.2 * len(columns), 2.2 * num_scenes))
  axes = np.atleast_2d(axes)
  cmap = plt.get_cmap('tab20', synthetic.NUM_CLASSES)
  for row in range(num_scenes):
    scene = synthetic.render(synthetic.scene_seed(seed, 'test', row), resolution)
    for col, key in enumerate(columns):
      ax = axes[row, col]
      value = scene[key]
      if key == 'segment_semantic':
        ax.imshow(value, cmap=cmap, vmin=-0.5, vmax=synthetic.NUM_CLASSES - 0.5,
                  interpolation='nearest')
      elif key == 'normal':
        ax.imshow((value + 1) / 2)
      elif key == 'depth_zbuffer':
        ax.imshow(value, cmap='magma_r')
      elif key in ('keypoints2d', 'edge_texture'):
        ax.imshow(value, cmap='gray', vmin=-1, vmax=1)
      else:
        ax.imshow(value)
      ax.set_xticks([])
      ax.set_yticks([])
      if row == 0:
        ax.set_title(key, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


if __name__ == '__main__':
  save_examples(sys.argv[1] if len(sys.argv) > 1 else 'docs/synthetic_examples.png')
