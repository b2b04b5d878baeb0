"""Embedded benchmark renderer: determinism, geometric consistency, related targets."""
import numpy as np
import pytest

from mtajax.data import synthetic

RES = 64


@pytest.fixture(scope='module')
def scenes():
  return [synthetic.render(synthetic.scene_seed(3, 'train', i), RES) for i in range(12)]


def _points(scene):
  """Back-projected camera-frame points (x right, y up, z towards the viewer)."""
  h, w = scene['depth_zbuffer'].shape
  f = float(scene['focal_length'])
  v, u = np.mgrid[0:h, 0:w]
  z = scene['depth_zbuffer'].astype(np.float64)
  return np.stack([(u + 0.5 - w / 2) / f * z, -(v + 0.5 - h / 2) / f * z, -z], -1)


def test_deterministic_and_seed_dependent():
  a = synthetic.render(synthetic.scene_seed(0, 'test', 5), RES)
  b = synthetic.render(synthetic.scene_seed(0, 'test', 5), RES)
  c = synthetic.render(synthetic.scene_seed(0, 'train', 5), RES)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(a['image'], c['image'])


def test_shapes_ranges_and_classes(scenes):
  seen = set()
  for s in scenes:
    assert s['image'].shape == (RES, RES, 3) and s['image'].dtype == np.uint8
    np.testing.assert_allclose(np.linalg.norm(s['normal'], axis=-1), 1.0, atol=1e-5)
    assert (np.sum(s['normal'] * -_points(s), -1) > 0).all()  # surfaces face the camera
    assert s['depth_zbuffer'].min() > 0 and np.isfinite(s['depth_zbuffer']).all()
    for key in ('keypoints2d', 'edge_texture'):
      assert s[key].min() >= -1 and s[key].max() <= 1
    seen |= set(np.unique(s['segment_semantic']).tolist())
  assert synthetic.NUM_CLASSES >= 10
  assert seen <= set(range(synthetic.NUM_CLASSES)) and len(seen) >= 8


def test_non_square_resolution():
  s = synthetic.render(synthetic.scene_seed(0, 'test', 0), 24, 40)
  assert s['segment_semantic'].shape == (24, 40) and s['normal'].shape == (24, 40, 3)


def test_normals_match_depth_finite_differences_on_planes(scenes):
  """Cross product of central differences of back-projected depth = the analytic normal."""
  checked = 0
  for s in scenes:
    p = _points(s)
    n = s['normal']
    du = p[1:-1, 2:] - p[1:-1, :-2]
    dv = p[:-2, 1:-1] - p[2:, 1:-1]  # image rows go down, y goes up
    est = np.cross(du, dv)
    est /= np.linalg.norm(est, axis=-1, keepdims=True)
    # Planar interior pixels: the 3x3 neighbourhood has one label, one normal, one plane offset.
    lab = s['segment_semantic']
    offset = np.sum(n * p, -1)
    same = np.ones_like(lab[1:-1, 1:-1], dtype=bool)
    for dy in (-1, 0, 1):
      for dx in (-1, 0, 1):
        win = (slice(1 + dy, lab.shape[0] - 1 + dy), slice(1 + dx, lab.shape[1] - 1 + dx))
        same &= (lab[win] == lab[1:-1, 1:-1])
        same &= np.abs(n[win] - n[1:-1, 1:-1]).max(-1) < 1e-6
        same &= np.abs(offset[win] - offset[1:-1, 1:-1]) < 1e-3
    cos = np.sum(est * n[1:-1, 1:-1], -1)[same]
    assert cos.size > 0
    assert np.degrees(np.arccos(np.clip(cos, -1, 1))).max() < 0.5
    checked += cos.size
  assert checked > 5000


def test_segmentation_boundaries_are_geometric_discontinuities(scenes):
  """Neighbours with different labels never lie on one plane (same normal and offset)."""
  for s in scenes:
    p, n, lab = _points(s), s['normal'].astype(np.float64), s['segment_semantic']
    for axis in (0, 1):
      a = (slice(None), slice(None, -1)) if axis else (slice(None, -1), slice(None))
      b = (slice(None), slice(1, None)) if axis else (slice(1, None), slice(None))
      boundary = lab[a] != lab[b]
      same_normal = np.abs(n[a] - n[b]).max(-1) < 1e-3
      offset_gap = np.abs(np.sum(n[a] * p[a], -1) - np.sum(n[a] * p[b], -1))
      coplanar = same_normal & (offset_gap < 5e-3)
      assert boundary.any() and not (boundary & coplanar).any()


def test_edges_and_keypoints_follow_structure(scenes):
  """edge_texture is high on label boundaries; corners concentrate near boundaries."""
  on, off, kp_on, kp_off = [], [], [], []
  for s in scenes:
    lab = s['segment_semantic']
    boundary = np.zeros_like(lab, dtype=bool)
    boundary[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    boundary[1:] |= lab[1:] != lab[:-1]
    near = boundary.copy()
    for shift in (-1, 1):
      near |= np.roll(boundary, shift, 0) | np.roll(boundary, shift, 1)
    on.append(s['edge_texture'][near])
    off.append(s['edge_texture'][~near])
    kp_on.append(s['keypoints2d'][near])
    kp_off.append(s['keypoints2d'][~near])
  assert np.concatenate(on).mean() > np.concatenate(off).mean() + 0.3
  assert (np.concatenate(kp_on) > 0).mean() > 2 * (np.concatenate(kp_off) > 0).mean()


def test_bad_arguments():
  with pytest.raises(ValueError, match='split'):
    synthetic.scene_seed(0, 'validation', 0)
  with pytest.raises(ValueError, match='Resolution'):
    synthetic.render(0, 4)
