"""Embedded multi-task benchmark: procedurally generated rooms rendered by vectorised ray casting.

A scene is an axis-aligned room (floor, ceiling, four walls) furnished with oriented boxes, spheres
and vertical cylinders (cabinets, tables, beds, balls, pillars, bins, doors, paintings, shelves,
lamps) and seen by a pinhole camera at a random pose. One primary ray per pixel gives the semantic
class, z-buffer depth and the analytic normal of the surface hit; a shadow ray to a point light
shades the per-class procedural textures. The 2D targets are computed from the noise-free image:
`edge_texture` is its blurred gradient magnitude and `keypoints2d` its Harris corner response, both
mapped to [-1, 1] with the Taskonomy convention 2v - 1. The stored image has sensor noise added.

Camera frame of the normals: x right, y up, z towards the viewer (visible surfaces have z > 0).
Every scene is a pure function of (seed, split, index).
"""
from __future__ import annotations

import dataclasses
import zlib

import numpy as np

CLASS_NAMES = ('wall', 'floor', 'ceiling', 'door', 'painting', 'cabinet', 'table', 'bed', 'shelf',
               'ball', 'lamp', 'pillar', 'bin')
NUM_CLASSES = len(CLASS_NAMES)
TASKS = ('segment_semantic', 'normal', 'depth_zbuffer', 'keypoints2d', 'edge_texture')
NYU_LIKE_TASKS = TASKS[:3]
MAX_DEPTH = 8.0  # metres; farther pixels are marked invalid in the depth/normal masks.
SPLITS = ('train', 'test')

(WALL, FLOOR, CEILING, DOOR, PAINTING, CABINET, TABLE, BED, SHELF, BALL, LAMP, PILLAR,
 BIN) = range(NUM_CLASSES)

_EDGE_SCALE = 0.08  # luminance gradient magnitude mapped to edge_texture = +1.
_HARRIS_SCALE = 5e-6  # Harris response mapped to keypoints2d = +1.
_NOISE_STD = 6.0  # sensor noise on the 0..255 scale.
_EPS = 1e-4


@dataclasses.dataclass(frozen=True)
class Primitive:
  """One convex solid: 'box' (centre, half sizes, yaw), 'sphere' or 'cylinder' (vertical)."""
  kind: str
  label: int
  center: np.ndarray
  size: np.ndarray  # box: half extents (3,); sphere: (r,); cylinder: (r, half height).
  yaw: float = 0.0
  tint: np.ndarray = dataclasses.field(default_factory=lambda: np.ones(3))


def scene_seed(seed: int, split: str, index: int) -> np.random.SeedSequence:
  """Seed sequence of one scene, derived from (seed, split, index)."""
  if split not in SPLITS:
    raise ValueError(f'Unknown split {split!r}; use one of {SPLITS}.')
  if seed < 0 or index < 0:
    raise ValueError(f'seed and index must be non-negative, got {seed} and {index}.')
  return np.random.SeedSequence([seed, zlib.crc32(split.encode()), index])


def _rot_y(yaw: float) -> np.ndarray:
  c, s = np.cos(yaw), np.sin(yaw)
  return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _tint(rng: np.random.Generator, base: tuple[float, float, float], jitter: float) -> np.ndarray:
  return np.clip(np.asarray(base) * (1 + jitter * rng.uniform(-1, 1, 3)), 0.02, 1.0)


_BASE_COLOURS = {
    WALL: (0.80, 0.76, 0.68), FLOOR: (0.55, 0.38, 0.24), CEILING: (0.92, 0.92, 0.90),
    DOOR: (0.50, 0.30, 0.17), PAINTING: (0.60, 0.45, 0.50), CABINET: (0.35, 0.45, 0.60),
    TABLE: (0.62, 0.44, 0.26), BED: (0.75, 0.30, 0.30), SHELF: (0.30, 0.30, 0.32),
    BALL: (0.85, 0.70, 0.20), LAMP: (1.00, 0.95, 0.75), PILLAR: (0.70, 0.70, 0.72),
    BIN: (0.35, 0.55, 0.35),
}


def _sample_objects(rng: np.random.Generator, room: np.ndarray, cam_xz: np.ndarray
                    ) -> list[Primitive]:
  """Furniture standing on the floor, mounted on walls and hanging from the ceiling."""
  prims: list[Primitive] = []
  footprints: list[tuple[np.ndarray, float]] = [(cam_xz, 0.5)]

  def free(xz: np.ndarray, radius: float) -> bool:
    inside = np.all(xz - radius > 0.02) and np.all(xz + radius < room[[0, 2]] - 0.02)
    return bool(inside) and all(np.linalg.norm(xz - c) > radius + r for c, r in footprints)

  def tint(label: int) -> np.ndarray:
    return _tint(rng, _BASE_COLOURS[label], 0.35)

  for _ in range(int(rng.integers(3, 8))):
    label = int(rng.choice([CABINET, TABLE, BED, BALL, PILLAR, BIN]))
    if label in (CABINET, BED, TABLE):
      half = {CABINET: (rng.uniform(0.2, 0.5), rng.uniform(0.5, 1.0), rng.uniform(0.2, 0.3)),
              BED: (rng.uniform(0.5, 0.9), rng.uniform(0.2, 0.3), rng.uniform(0.9, 1.1)),
              TABLE: (rng.uniform(0.35, 0.7), rng.uniform(0.35, 0.4), rng.uniform(0.3, 0.5))}[label]
      radius = float(np.hypot(half[0], half[2]))
    elif label == BALL:
      radius = float(rng.uniform(0.1, 0.3))
    elif label == PILLAR:
      radius = float(rng.uniform(0.12, 0.25))
    else:
      radius = float(rng.uniform(0.12, 0.22))
    for _ in range(10):
      xz = rng.uniform([0, 0], room[[0, 2]])
      if free(xz, radius):
        break
    else:
      continue
    footprints.append((xz, radius))
    colour = tint(label)
    yaw = float(rng.uniform(0, np.pi))
    if label in (CABINET, BED):
      prims.append(Primitive('box', label, np.array([xz[0], half[1], xz[1]]), np.array(half),
                             yaw, colour))
    elif label == TABLE:
      top = 0.025
      height = 2 * half[1]
      prims.append(Primitive('box', label, np.array([xz[0], height - top, xz[1]]),
                             np.array([half[0], top, half[2]]), yaw, colour))
      leg = 0.03
      for sx in (-1, 1):
        for sz in (-1, 1):
          off = _rot_y(yaw) @ np.array([sx * (half[0] - 2 * leg), 0.0, sz * (half[2] - 2 * leg)])
          prims.append(Primitive('box', label,
                                 np.array([xz[0] + off[0], (height - 2 * top) / 2, xz[1] + off[2]]),
                                 np.array([leg, (height - 2 * top) / 2, leg]), yaw, colour))
    elif label == BALL:
      prims.append(Primitive('sphere', label, np.array([xz[0], radius, xz[1]]),
                             np.array([radius]), 0.0, colour))
    elif label == PILLAR:
      prims.append(Primitive('cylinder', label, np.array([xz[0], room[1] / 2, xz[1]]),
                             np.array([radius, room[1] / 2]), 0.0, colour))
    else:
      half_h = float(rng.uniform(0.15, 0.3))
      prims.append(Primitive('cylinder', label, np.array([xz[0], half_h, xz[1]]),
                             np.array([radius, half_h]), 0.0, colour))

  for _ in range(int(rng.integers(1, 4))):
    label = int(rng.choice([DOOR, PAINTING, SHELF]))
    wall = int(rng.integers(4))
    axis = 0 if wall < 2 else 2  # axis along the wall
    normal_axis = 2 - axis
    length = room[axis]
    half = {DOOR: (rng.uniform(0.4, 0.5), 1.0, rng.uniform(0.03, 0.05)),
            PAINTING: (rng.uniform(0.2, 0.6), rng.uniform(0.2, 0.4), rng.uniform(0.03, 0.05)),
            SHELF: (rng.uniform(0.3, 0.7), rng.uniform(0.04, 0.08), rng.uniform(0.1, 0.15))}[label]
    if length < 2 * half[0] + 0.2:
      continue
    along = rng.uniform(half[0] + 0.1, length - half[0] - 0.1)
    y = {DOOR: half[1], PAINTING: rng.uniform(1.2, 1.7), SHELF: rng.uniform(0.9, 1.8)}[label]
    y = min(y, room[1] - half[1] - 0.05)
    centre = np.zeros(3)
    centre[axis] = along
    centre[1] = y
    centre[normal_axis] = half[2] if wall % 2 == 0 else room[normal_axis] - half[2]
    extents = np.zeros(3)
    extents[axis], extents[1], extents[normal_axis] = half[0], half[1], half[2]
    prims.append(Primitive('box', label, centre, extents, 0.0, tint(label)))

  for _ in range(int(rng.integers(0, 3))):
    radius = float(rng.uniform(0.1, 0.2))
    xz = rng.uniform([0.4, 0.4], room[[0, 2]] - 0.4)
    prims.append(Primitive('sphere', LAMP, np.array([xz[0], room[1] - rng.uniform(0.4, 0.8),
                                                     xz[1]]), np.array([radius]), 0.0,
                           tint(LAMP)))
  return prims


def _bounding_radius(p: Primitive) -> float:
  if p.kind == 'box':
    return float(np.linalg.norm(p.size))
  if p.kind == 'sphere':
    return float(p.size[0])
  return float(np.hypot(p.size[0], p.size[1]))


def _hit_t(p: Primitive, o: np.ndarray, d: np.ndarray, dd: np.ndarray) -> np.ndarray:
  """Nearest hit t > eps along rays o + t d from a shared origin o (3,); inf on a miss.

  `dd` holds the squared norms of the directions `d` (N, 3).
  """
  t = np.full(d.shape[0], np.inf)
  # Cull rays that miss the bounding sphere, then intersect the solid on the rest.
  oc = o - p.center
  b = d @ oc
  c = oc @ oc - _bounding_radius(p) ** 2
  idx = np.flatnonzero((b * b - dd * c >= 0) & ((b < 0) | (c < 0)))
  if idx.size == 0:
    return t
  d, a, b = d[idx], dd[idx], b[idx]
  oc = np.broadcast_to(oc, d.shape)
  if p.kind == 'box':
    rot = _rot_y(p.yaw)
    lo, ld = oc @ rot, d @ rot
    ld = np.where(np.abs(ld) < 1e-12, 1e-12, ld)
    t1 = (-p.size - lo) / ld
    t2 = (p.size - lo) / ld
    t_in = np.minimum(t1, t2).max(1)
    t[idx] = np.where((t_in <= np.maximum(t1, t2).min(1)) & (t_in > _EPS), t_in, np.inf)
  elif p.kind == 'sphere':
    r = p.size[0]
    disc = b * b - a * (oc[0] @ oc[0] - r * r)
    ts = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
    t[idx] = np.where((disc >= 0) & (ts > _EPS), ts, np.inf)
  else:
    r, half_h = p.size
    a2 = np.maximum(d[:, 0] ** 2 + d[:, 2] ** 2, 1e-12)
    b2 = d[:, 0] * oc[:, 0] + d[:, 2] * oc[:, 2]
    disc = b2 * b2 - a2 * (oc[:, 0] ** 2 + oc[:, 2] ** 2 - r * r)
    t_side = (-b2 - np.sqrt(np.maximum(disc, 0.0))) / a2
    y_side = oc[:, 1] + t_side * d[:, 1]
    t_side = np.where((disc >= 0) & (t_side > _EPS) & (np.abs(y_side) <= half_h), t_side, np.inf)
    dy = np.where(np.abs(d[:, 1]) < 1e-12, 1e-12, d[:, 1])
    t_cap = (-np.sign(dy) * half_h - oc[:, 1]) / dy
    cap_xz = oc[:, [0, 2]] + t_cap[:, None] * d[:, [0, 2]]
    t_cap = np.where((t_cap > _EPS) & (np.sum(cap_xz ** 2, 1) <= r * r), t_cap, np.inf)
    t[idx] = np.minimum(t_side, t_cap)
  return t


def _surface(p: Primitive, hit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """World normal and 2D surface coordinates (metres) of points `hit` on the surface of `p`."""
  n = hit.shape[0]
  local = hit - p.center
  if p.kind == 'box':
    rot = _rot_y(p.yaw)
    lh = local @ rot
    face = np.abs(lh / p.size).argmax(1)
    local_n = np.zeros((n, 3))
    local_n[np.arange(n), face] = np.sign(lh[np.arange(n), face])
    uv = np.where(face[:, None] == 0, lh[:, [2, 1]],
                  np.where(face[:, None] == 1, lh[:, [0, 2]], lh[:, [0, 1]]))
    return local_n @ rot.T, uv
  if p.kind == 'sphere':
    r = p.size[0]
    normal = local / r
    return normal, np.stack([np.arctan2(normal[:, 0], normal[:, 2]) * r, local[:, 1]], 1)
  r, half_h = p.size
  radial = np.hypot(local[:, 0], local[:, 2])
  on_cap = np.abs(np.abs(local[:, 1]) - half_h) * r < np.abs(radial - r) * half_h
  cap_n = np.stack([np.zeros(n), np.sign(local[:, 1]), np.zeros(n)], 1)
  side_n = np.stack([local[:, 0] / radial, np.zeros(n), local[:, 2] / radial], 1)
  normal = np.where(on_cap[:, None], cap_n, side_n)
  uv = np.where(on_cap[:, None], local[:, [0, 2]],
                np.stack([np.arctan2(local[:, 0], local[:, 2]) * r, local[:, 1]], 1))
  return normal, uv


def _value_noise(grid: np.ndarray, uv: np.ndarray, freq: float) -> np.ndarray:
  """Smooth tiled value noise in [0, 1] from a random lattice."""
  g = grid.shape[0]
  x = uv * freq
  i = np.floor(x).astype(np.int64)
  f = x - i
  f = f * f * (3 - 2 * f)
  i0, i1 = i % g, (i + 1) % g
  v00, v10 = grid[i0[:, 0], i0[:, 1]], grid[i1[:, 0], i0[:, 1]]
  v01, v11 = grid[i0[:, 0], i1[:, 1]], grid[i1[:, 0], i1[:, 1]]
  top = v00 + (v10 - v00) * f[:, 0]
  bottom = v01 + (v11 - v01) * f[:, 0]
  return top + (bottom - top) * f[:, 1]


def _class_texture(cls: int, uv: np.ndarray, grid: np.ndarray, style: np.ndarray) -> np.ndarray:
  """Albedo modulation (N,) of class `cls`, about [0.3, 1.3], from surface coordinates in metres."""
  s, t = uv[:, 0], uv[:, 1]
  if cls in (CEILING, CABINET, BED, SHELF):
    fine = _value_noise(grid, uv + 17.3, 23.0)
    if cls == CEILING:
      return 0.95 + 0.08 * fine
    if cls == CABINET:
      return np.where(np.mod(t, 0.35) < 0.025, 0.5, 0.95 + 0.1 * fine)
    if cls == BED:
      return 0.8 + 0.25 * ((np.floor(s / 0.08) + np.floor(t / 0.08)) % 2) * fine
    return 0.8 + 0.3 * fine
  if cls == BALL:
    return np.where(np.mod(s * 6, 2.0) < 1.0, 1.1, 0.45)
  if cls == LAMP:
    return np.ones_like(s)
  if cls == BIN:
    return 0.8 + 0.3 * np.sign(np.sin(60 * s))
  noise = _value_noise(grid, uv, 4.0)
  grain = 0.9 + 0.1 * np.sin(40 * t + 6 * noise)
  if cls == FLOOR:
    if style[FLOOR] > 0.5:
      return grain * (0.85 + 0.3 * _value_noise(grid, np.stack([np.floor(s / 0.18), t * 0.2], 1),
                                                1.0))
    return np.where((np.mod(s, 0.5) < 0.02) | (np.mod(t, 0.5) < 0.02), 0.55,
                    0.9 + 0.15 * ((np.floor(s / 0.5) + np.floor(t / 0.5)) % 2))
  if cls == WALL:
    if style[WALL] > 0.6:
      return 0.9 + 0.12 * np.sign(np.sin(2 * np.pi * s / 0.25))
    return 0.85 + 0.25 * noise
  if cls == DOOR:
    return grain * np.where(np.abs(np.mod(t, 0.6) - 0.3) < 0.02, 0.7, 1.0)
  if cls == PAINTING:
    return 0.4 + 0.9 * np.abs(np.sin(9 * s + 7 * noise) * np.cos(11 * t - 5 * noise))
  if cls == TABLE:
    return grain
  return 0.75 + 0.45 * np.abs(np.sin(5 * (s + t) + 8 * noise))  # PILLAR


def _texture(label: np.ndarray, uv: np.ndarray, grid: np.ndarray, style: np.ndarray
             ) -> np.ndarray:
  """Per-pixel albedo modulation from the class of each pixel."""
  out = np.ones(label.shape)
  for cls in np.unique(label):
    sel = label == cls
    out[sel] = _class_texture(int(cls), uv[sel], grid, style)
  return out


def _gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
  radius = max(1, int(np.ceil(3 * sigma)))
  k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
  k /= k.sum()
  pad = np.pad(x, radius, mode='reflect')
  rows = sum(w * pad[i:i + x.shape[0], :] for i, w in enumerate(k))
  return sum(w * rows[:, i:i + x.shape[1]] for i, w in enumerate(k))


def _sobel(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  p = np.pad(x, 1, mode='reflect')
  gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:] - p[:-2, :-2] - 2 * p[1:-1, :-2] - p[2:, :-2]) / 8
  gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:] - p[:-2, :-2] - 2 * p[:-2, 1:-1] - p[:-2, 2:]) / 8
  return gx, gy


def edge_texture(luminance: np.ndarray) -> np.ndarray:
  """Blurred gradient magnitude of a [0, 1] luminance image, as 2v - 1 in [-1, 1]."""
  gx, gy = _sobel(_gaussian_blur(luminance, 0.7))
  v = np.clip(np.hypot(gx, gy) / _EDGE_SCALE, 0.0, 1.0)
  return (2 * v - 1).astype(np.float32)


def keypoints2d(luminance: np.ndarray) -> np.ndarray:
  """Harris corner response (k = 0.05, Gaussian window) of a luminance image, as 2v - 1."""
  gx, gy = _sobel(luminance)
  sxx, syy, sxy = (_gaussian_blur(a, 1.0) for a in (gx * gx, gy * gy, gx * gy))
  response = sxx * syy - sxy * sxy - 0.05 * (sxx + syy) ** 2
  v = np.clip(response / _HARRIS_SCALE, 0.0, 1.0)
  return (2 * v - 1).astype(np.float32)


def render(seed: np.random.SeedSequence | int, height: int = 64, width: int | None = None
           ) -> dict[str, np.ndarray]:
  """Renders one scene; returns the image, the five targets, masks and the focal length.

  Args:
    seed: seed of the scene (see `scene_seed`).
    height: image height in pixels.
    width: image width (default: square).

  Returns:
    'image' (H, W, 3) uint8 RGB; 'segment_semantic' (H, W) uint8 in [0, NUM_CLASSES);
    'depth_zbuffer' (H, W) float32 metres; 'normal' (H, W, 3) float32 unit vectors;
    'keypoints2d', 'edge_texture' (H, W) float32 in [-1, 1]; 'depth_zbuffer_mask' and
    'normal_mask' (H, W) uint8 (depth <= MAX_DEPTH); 'focal_length' float32 (pixels, principal
    point at the image centre).
  """
  width = height if width is None else width
  if height < 8 or width < 8:
    raise ValueError(f'Resolution must be at least 8x8, got {height}x{width}.')
  rng = np.random.default_rng(seed)
  room = np.array([rng.uniform(3.5, 7.0), rng.uniform(2.4, 3.2), rng.uniform(3.5, 7.0)])
  cam = np.array([rng.uniform(0.4, room[0] - 0.4), rng.uniform(1.0, 1.8),
                  rng.uniform(0.4, room[2] - 0.4)])
  to_centre = 0.5 * room[[0, 2]] - cam[[0, 2]]
  yaw = np.arctan2(to_centre[0], to_centre[1]) + rng.uniform(-1.0, 1.0)
  pitch, roll = rng.uniform(-0.45, 0.1), rng.uniform(-0.05, 0.05)
  fov = rng.uniform(np.radians(55), np.radians(75))
  focal = 0.5 * width / np.tan(0.5 * fov)
  forward = np.array([np.sin(yaw) * np.cos(pitch), np.sin(pitch), np.cos(yaw) * np.cos(pitch)])
  right = np.array([np.cos(yaw), 0.0, -np.sin(yaw)])
  down = np.cross(right, forward)
  right, down = (np.cos(roll) * right + np.sin(roll) * down,
                 np.cos(roll) * down - np.sin(roll) * right)
  cam_to_world = np.stack([right, down, forward], 1)

  prims = _sample_objects(rng, room, cam[[0, 2]])
  wall_tints = np.stack([_tint(rng, _BASE_COLOURS[WALL], 0.25)] * 4)
  floor_tint = _tint(rng, _BASE_COLOURS[FLOOR], 0.35)
  ceiling_tint = _tint(rng, _BASE_COLOURS[CEILING], 0.05)
  grid = rng.uniform(0, 1, (64, 64))
  style = rng.uniform(0, 1, NUM_CLASSES)
  light = np.array([rng.uniform(0.5, room[0] - 0.5), room[1] - 0.05,
                    rng.uniform(0.5, room[2] - 0.5)])
  ambient = rng.uniform(0.2, 0.35)

  v, u = np.mgrid[0:height, 0:width]
  d_cam = np.stack([(u + 0.5 - width / 2) / focal, (v + 0.5 - height / 2) / focal,
                    np.ones_like(u, dtype=np.float64)], -1).reshape(-1, 3)
  d = d_cam @ cam_to_world.T
  n_rays = d.shape[0]
  dd = np.einsum('ij,ij->i', d, d)

  # Room interior: the exit point of the ray from the room box.
  safe = np.where(np.abs(d) < 1e-12, 1e-12, d)
  t_axes = np.where(safe > 0, (room - cam) / safe, -cam / safe)
  axis = t_axes.argmin(1)
  t = t_axes[np.arange(n_rays), axis]
  sign = np.sign(safe[np.arange(n_rays), axis])
  normal = np.zeros((n_rays, 3))
  normal[np.arange(n_rays), axis] = -sign
  label = np.where(axis == 1, np.where(sign > 0, CEILING, FLOOR), WALL)
  hit = cam + t[:, None] * d
  uv = np.where(axis[:, None] == 0, hit[:, [2, 1]],
                np.where(axis[:, None] == 1, hit[:, [0, 2]], hit[:, [0, 1]]))
  wall_id = np.where(axis == 0, (sign > 0).astype(int), 2 + (sign > 0))
  tint = np.where((label == WALL)[:, None], wall_tints[wall_id],
                  np.where((label == FLOOR)[:, None], floor_tint, ceiling_tint))
  if prims:
    t_prims = np.stack([_hit_t(p, cam, d, dd) for p in prims])
    winner = t_prims.argmin(0)
    on_object = t_prims[winner, np.arange(n_rays)] < t
    for k, p in enumerate(prims):
      sel = np.flatnonzero(on_object & (winner == k))
      if sel.size:
        t[sel] = t_prims[k, sel]
        normal[sel], uv[sel] = _surface(p, cam + t[sel, None] * d[sel])
        label[sel] = p.label
        tint[sel] = p.tint

  hit = cam + t[:, None] * d
  to_light = light - hit
  dist = np.linalg.norm(to_light, axis=1)
  # Shadow rays are cast from the light (a shared origin) towards the shaded points.
  from_light = -to_light
  dd_light = dist ** 2
  lit = np.ones(n_rays, dtype=bool)
  for p in prims:
    if p.label != LAMP:
      lit &= ~(_hit_t(p, light, from_light, dd_light) < 1.0 - 1e-5)
  lambert = np.clip(np.sum(normal * to_light, 1) / dist, 0.0, 1.0)
  irradiance = ambient + (1 - ambient) * lambert * lit * np.minimum(1.0, 6.0 / dist ** 2)
  irradiance = np.where(label == LAMP, 1.2, irradiance)
  albedo = tint * _texture(label, uv, grid, style)[:, None]
  clean = np.clip(albedo * irradiance[:, None], 0.0, 1.0) ** (1 / 2.2)
  clean = clean.reshape(height, width, 3)
  noisy = clean * 255 + rng.normal(0.0, _NOISE_STD, clean.shape)
  image = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)

  n_cam = normal @ cam_to_world  # world -> camera (x right, y down, z forward)
  n_out = (n_cam * np.array([1.0, -1.0, -1.0])).reshape(height, width, 3)
  depth = t.reshape(height, width)
  valid = (depth <= MAX_DEPTH).astype(np.uint8)
  luminance = clean @ np.array([0.299, 0.587, 0.114])
  return {
      'image': image,
      'segment_semantic': label.reshape(height, width).astype(np.uint8),
      'depth_zbuffer': depth.astype(np.float32),
      'normal': n_out.astype(np.float32),
      'keypoints2d': keypoints2d(luminance),
      'edge_texture': edge_texture(luminance),
      'depth_zbuffer_mask': valid,
      'normal_mask': valid,
      'focal_length': np.float32(focal),
  }
