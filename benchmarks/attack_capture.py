"""Captures every attack's outputs (x_adv and all diagnostics) over directions, options and loops.

``python benchmarks/attack_capture.py OUT.npz`` writes them; ``--compare OLD.npz`` also reports,
per case, whether each array is bit-identical to OLD's (the attack core's refactoring check:
default outputs must stay bit-identical on one machine). The model is the plain-JAX net of
:mod:`mtajax.testing` with the three NYUv2-style tasks.
"""

from __future__ import annotations

import argparse
import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np

from mtajax import attacks
from mtajax import directions
from mtajax import tasks as mt
from mtajax import testing

S, B = 16, 3


def problem():
  params = testing.init(jax.random.key(0), 3, width=4)
  rng = np.random.default_rng(0)
  x = rng.uniform(-100, 100, (B, S, S, 3)).astype(np.float32)
  pred = testing.apply(params, jnp.asarray(x))
  seg = np.asarray(jnp.argmax(pred["segment_semantic"], -1)).astype(np.int32)
  seg[:, 0] = 255
  labels = {"segment_semantic": seg,
            "normal": (np.asarray(pred["normal"]) + rng.normal(0, .3, pred["normal"].shape)
                       ).astype(np.float32),
            "depth_zbuffer": (np.abs(np.asarray(pred["depth_zbuffer"][..., 0])) + 0.5
                              ).astype(np.float32)}
  tasks = (mt.Segmentation(channels=13), mt.Normal(label_encoding="unit"), mt.Depth())
  return params, jnp.asarray(x), labels, tasks


BOUNDS = (np.array([-104.0, -116.7, -122.7], np.float32),
          np.array([151.0, 138.3, 132.3], np.float32))
DIRS = ("single_depth_zbuffer", "total", "sign_total", "gbmta", "mgda", "pcgrad", "imtl_g",
        "cagrad", "nash_mtl")


def cases():
  """(name, attack, direction, attack_loss, kwargs)."""
  key = jax.random.key(3)
  out = []
  for d in DIRS:
    out += [(f"fgsm/{d}", "fgsm", d, "default", {}),
            (f"pgd/{d}", "pgd", d, "default", {"num_steps": 4}),
            (f"apgd/{d}", "apgd", d, "default", {"num_steps": 5}),
            (f"apgd_aa/{d}", "apgd", d, "default", {"num_steps": 5, "variant": "autoattack"})]
  for d in ("total", "gbmta"):
    out += [(f"auto_sage/{d}", "auto_sage", d, "default", {"num_steps": 3}),
            (f"auto_sage_last/{d}", "auto_sage", d, "default",
             {"num_steps": 3, "lookahead": "last_task"})]
  g = "gbmta"
  out += [
      ("fgsm_l2", "fgsm", g, "default", {"norm": "l2"}),
      ("pgd_best_rs", "pgd", g, "default", {"num_steps": 4, "return_best": True,
                                            "random_start": True, "key": key}),
      ("pgd_l2", "pgd", g, "default", {"num_steps": 4, "norm": "l2"}),
      ("pgd_rolled", "pgd", g, "default", {"num_steps": 4, "unroll": 1}),
      ("pgd_segpgd", "pgd", g, "segpgd", {"num_steps": 4}),
      ("pgd_js_best", "pgd", g, "js", {"num_steps": 4, "return_best": True}),
      ("apgd_ps_rs_rb", "apgd", g, "default", {"num_steps": 6, "per_sample": True,
                                               "random_start": True, "key": key,
                                               "restart_from_best": True}),
      ("apgd_rolled", "apgd", g, "default", {"num_steps": 5, "unroll": 1}),
      ("apgd_ew", "apgd", "total", "default", {"num_steps": 5,
                                               "example_weight": jnp.array([1., 1., 0.])}),
      ("apgd_baselines", "apgd", g, "default", {"num_steps": 5, "baselines": {
          "segment_semantic": 2.0, "normal": 0.5, "depth_zbuffer": 1.0}}),
      ("apgd_aa_rs_l2", "apgd", g, "default", {"num_steps": 6, "variant": "autoattack",
                                               "random_start": True, "key": key, "norm": "l2"}),
      ("apgd_cospgd", "apgd", g, "cospgd", {"num_steps": 5}),
      ("pgd_targets", "pgd", "total", "default", {"num_steps": 4, "targets": "T"}),
      ("apgd_targets_keep", "apgd", "gbmta", "default", {"num_steps": 4, "targets": "T",
                                                         "keep_untargeted": True}),
      ("pgd_x_init", "pgd", g, "default", {"num_steps": 3, "x_init": "XI"}),
  ]
  return out


def capture(loop: str | None = None, only: str = "") -> dict[str, np.ndarray]:
  params, x, labels, tasks = problem()
  out = {}
  for name, attack, d, attack_loss, kw in cases():
    if only not in name:
      continue
    direction = directions.by_name(d)
    loss_fn = mt.make_loss_fn(functools.partial(testing.apply, params), tasks,
                              direction.reduction, attack_loss)
    kw = dict(kw)
    if kw.get("targets") == "T":
      kw["targets"] = {"depth_zbuffer": labels["depth_zbuffer"] * 0 + 2.0}
    if kw.get("x_init") == "XI":
      kw["x_init"] = x + 3.0
    if loop is not None and attack != "fgsm" and "unroll" not in kw:
      kw["unroll" if loop == "host" else "loop"] = loop
    res = attacks.by_name(attack)(loss_fn, x, labels, direction=direction, eps=8.0,
                                  bounds=BOUNDS, **kw)
    for field, v in res._asdict().items():
      if isinstance(v, dict):
        for t, a in v.items():
          out[f"{name}/{field}/{t}"] = np.asarray(a)
      else:
        out[f"{name}/{field}"] = np.asarray(v)
  return out


def main(argv):
  p = argparse.ArgumentParser()
  p.add_argument("out")
  p.add_argument("--compare")
  p.add_argument("--loop", default=None, help="host (old) / python (new): the host-loop path")
  p.add_argument("--only", default="", help="only the cases whose name contains this")
  a = p.parse_args(argv)
  got = capture(a.loop, a.only)
  np.savez(a.out, **got)
  print(f"{len(got)} arrays")
  if a.compare:
    old = np.load(a.compare)
    diff = []
    for k in sorted(k for k in set(old) | set(got) if a.only in k):
      if k not in old or k not in got:
        diff.append(f"{k}: missing {'old' if k not in old else 'new'}")
      elif old[k].shape != got[k].shape or not np.array_equal(old[k], got[k], equal_nan=True):
        m = np.nanmax(np.abs(old[k].astype(np.float64) - got[k])) if old[k].shape == got[k].shape else "shape"
        diff.append(f"{k}: max |diff| {m}")
    print(f"{len(old)} old arrays; {len(diff)} differ")
    print("\n".join(diff[:80]))


if __name__ == "__main__":
  main(sys.argv[1:])
