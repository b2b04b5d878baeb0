"""PNG figures like paper Figs. 1, 2, 4 and 6, drawn with matplotlib's object API (Agg, no pyplot).

Figs. 1, 2 and 4 are pure functions of records (one ``records.groups`` group); Fig. 6 takes
arrays (an image, its adversarial versions and the model's predictions). Each returns a
``matplotlib.figure.Figure``; ``save_png`` writes one atomically.
"""

from __future__ import annotations

import io
import os
import pathlib
from typing import Mapping, Sequence

import matplotlib
from matplotlib import figure as mpl_figure
from matplotlib.backends import backend_agg
import numpy as np

from mtajax import results
from mtajax.report import records as rec_lib
from mtajax.report import tables
from mtajax.report.records import Record

_SEGMENTATION = "segment_semantic"
_NORMAL = "normal"


def new_figure(width: float, height: float) -> mpl_figure.Figure:
  """An empty figure of ``width`` x ``height`` inches drawn by Agg (no pyplot, no display)."""
  fig = mpl_figure.Figure(figsize=(width, height), dpi=100, layout="constrained")
  backend_agg.FigureCanvasAgg(fig)
  return fig


def save_png(fig: mpl_figure.Figure, path: str | os.PathLike[str]) -> pathlib.Path:
  """Writes ``fig`` as PNG to ``path`` atomically (``results.write_atomic``: an unchanged file is
  left as it is)."""
  png = io.BytesIO()
  fig.savefig(png, format="png")
  results.write_atomic(path, png.getvalue())
  return pathlib.Path(path)


def figure_per_task(records: Sequence[Record], model: str | None = None,
                    attack: str | None = None, eps: float | None = None) -> mpl_figure.Figure:
  """Fig. 1: ARP-x of each task (bars) for each direction (groups) of one model and attack."""
  model, attack, eps = tables.per_task_defaults(records, model, attack, eps)
  chosen = rec_lib.select(records, model=model, attack=attack, eps=eps)
  if not chosen:
    raise rec_lib.MissingData(f"no {rec_lib.attack_label(attack)} records of {model!r} at "
                              f"ε={eps:g}")
  tasks = chosen[0]["tasks"]
  directions = rec_lib.directions_present(chosen, tasks)
  fig = new_figure(1.0 + 1.1 * len(directions), 3.4)
  ax = fig.add_subplot()
  width = 0.8 / len(tasks)
  x = np.arange(len(directions))
  for i, task in enumerate(tasks):
    values = [rec_lib.lookup(chosen, model, attack, d, eps)["arp_per_task"][task]
              for d in directions]
    ax.bar(x + (i - (len(tasks) - 1) / 2) * width, values, width,
           label=f"{rec_lib.task_label(task)} ARP")
  ax.axhline(0, color="black", linewidth=0.6)
  ax.set_xticks(x, [rec_lib.direction_label(d) for d in directions], rotation=20)
  ax.set_ylabel("ARP-x (%)")
  ax.set_title(f"Per-task ARP, {rec_lib.attack_label(attack)} ε={eps:g}, model "
               f"{rec_lib.models(chosen, clean_trained=None)[0].label}", fontsize=10)
  ax.legend(fontsize=8)
  return fig


def figure_arp_vs_eps(records: Sequence[Record]) -> mpl_figure.Figure:
  """Fig. 2: ARP averaged over the clean-trained models vs ε, a line per direction, a panel per
  base attack (each point averages the models that have that record)."""
  clean_trained = rec_lib.select(rec_lib.attacked(records), adv_training=rec_lib.NO_AT)
  attacks = rec_lib.attacks_present(clean_trained)
  if not attacks:
    raise rec_lib.MissingData("no attacked clean-trained models")
  tasks = clean_trained[0]["tasks"]
  n_models = len(rec_lib.models(clean_trained))
  fig = new_figure(3.3 * len(attacks) + 0.5, 3.3)
  axes = fig.subplots(1, len(attacks), squeeze=False)[0]
  for ax, attack in zip(axes, attacks):
    of_attack = rec_lib.select(clean_trained, attack=attack)
    for direction in rec_lib.directions_present(of_attack, tasks):
      points = []
      for eps in rec_lib.eps_values(of_attack):
        found = rec_lib.select(of_attack, direction=direction, eps=eps)
        if found:
          last = {r["model"]: float(r["arp"]) for r in found}
          points.append((eps, float(np.mean(list(last.values())))))
      xs, ys = zip(*points)
      style = "-" if rec_lib.single_task(direction) is None else "--"
      ax.plot(xs, ys, style, marker="o", markersize=3, label=rec_lib.direction_label(direction))
    ax.set_title(rec_lib.attack_label(attack), fontsize=10)
    ax.set_xlabel("ε")
    ax.grid(alpha=0.3)
  axes[0].set_ylabel(f"mean ARP (%) over {n_models} models")
  axes[-1].legend(fontsize=7)
  return fig


def figure_transfer(records: Sequence[Record], attack: str | None = None,
                    eps: float | None = None) -> mpl_figure.Figure:
  """Fig. 4: transferability of Single-x (a line per attacked task x) vs the sharing level."""
  eps = rec_lib.default_eps(records) if eps is None else eps
  attack = rec_lib.transfer_attack(records, eps, attack)
  by_task = tables.transfer_by_level(records, attack, eps)
  if not by_task:
    raise rec_lib.MissingData(f"no defined transferability for {rec_lib.attack_label(attack)} at "
                              f"ε={eps:g}")
  fig = new_figure(4.6, 3.4)
  ax = fig.add_subplot()
  for task in rec_lib.attacked(records)[0]["tasks"]:
    if task in by_task:
      levels, values = zip(*by_task[task].items())
      ax.plot(levels, values, marker="o", label=rec_lib.direction_label(f"single_{task}"))
  levels = sorted({lvl for by in by_task.values() for lvl in by})
  ax.set_xticks(levels, [f"{lvl}L" for lvl in levels])
  ax.set_xlabel("sharing level (shared leading blocks; 0 = IND)")
  ax.set_ylabel("transferability (Eq. 11)")
  ax.set_title(f"Transferability vs sharing, {rec_lib.attack_label(attack)} ε={eps:g}",
               fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return fig


def _rgb(image: np.ndarray, what: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"{what} must be an (H, W, 3) uint8 RGB image, got {image.dtype} "
                     f"{image.shape}; convert with np.clip(x, 0, 255).astype(np.uint8).")
  if shape is not None and image.shape != shape:
    raise ValueError(f"{what} has shape {image.shape} but the image has {shape}; pass "
                     "perturbed images of the image's size.")
  return image


def _prediction(task: str, value: np.ndarray, which: str) -> np.ndarray:
  value = np.asarray(value)
  if value.ndim not in (2, 3) or not np.all(np.isfinite(value)):
    raise ValueError(f"{which} prediction of {task!r} must be a finite (H, W[, C]) array, got "
                     f"shape {value.shape}; pass one image's model output.")
  if task == _SEGMENTATION:
    return value.argmax(-1) if value.ndim == 3 else value.astype(np.int64)
  if task == _NORMAL:
    if value.ndim != 3 or value.shape[-1] != 3:
      raise ValueError(f"{which} normals must be (H, W, 3), got {value.shape}.")
    return np.clip((value + 1) / 2, 0, 1)
  if value.ndim == 3:
    if value.shape[-1] != 1:
      raise ValueError(f"{which} prediction of {task!r} must be (H, W) or (H, W, 1), got "
                       f"{value.shape}.")
    value = value[..., 0]
  return value


def figure_examples(image_rgb: np.ndarray, perturbed: Mapping[float, np.ndarray],
                    preds_clean: Mapping[str, np.ndarray], preds_adv: Mapping[str, np.ndarray],
                    tasks: Sequence[str], *, adv_eps: float | None = None
                    ) -> mpl_figure.Figure:
  """Fig. 6: the image and its adversarial versions per ε (row 1), the perturbations amplified as
  ``δ·127/ε + 128`` (row 2), and the predictions of each task before (row 3) and after (row 4)
  the attack: segmentation argmax as a class colour map, normals as RGB ``(n + 1)/2``, scalar
  maps with one colour scale shared by the clean and attacked prediction.

  Args:
    image_rgb: (H, W, 3) uint8 clean image.
    perturbed: ``{ε: (H, W, 3) uint8}`` adversarial images, ε in 0–255 units.
    preds_clean: ``{task: (H, W[, C])}`` predictions on the clean image (segmentation: logits or
      labels).
    preds_adv: the same on the adversarial image of ``adv_eps``.
    tasks: the tasks to show, in order.
    adv_eps: the ε of ``preds_adv`` (a key of ``perturbed``); default the largest.
  """
  image = _rgb(image_rgb, "image_rgb")
  if not perturbed or any(not eps > 0 for eps in perturbed):
    raise ValueError(f"perturbed must map positive ε to images, got ε {sorted(perturbed)}.")
  if not tasks:
    raise ValueError("tasks is empty; pass the task names whose predictions to show.")
  for which, preds in (("preds_clean", preds_clean), ("preds_adv", preds_adv)):
    missing = [t for t in tasks if t not in preds]
    if missing:
      raise ValueError(f"{which} lacks {missing}; pass a prediction for every task.")
  eps_list = sorted(perturbed)
  adv_eps = eps_list[-1] if adv_eps is None else adv_eps
  if adv_eps not in perturbed:
    raise ValueError(f"adv_eps={adv_eps} is not a key of perturbed {eps_list}; pass the ε of "
                     "preds_adv.")
  columns = max(1 + len(eps_list), len(tasks))
  fig = new_figure(1.9 * columns, 1.9 * 4 + 0.3)
  axes = fig.subplots(4, columns, squeeze=False)
  for ax in axes.flat:
    ax.set_axis_off()
  axes[0, 0].imshow(image)
  axes[0, 0].set_title("clean image", fontsize=8)
  axes[1, 0].text(0.5, 0.5, "perturbation δ\n(amplified)", ha="center", va="center",
                  fontsize=9, transform=axes[1, 0].transAxes)
  for col, eps in enumerate(eps_list, 1):
    adv = _rgb(perturbed[eps], f"perturbed[{eps}]", image.shape)
    delta = adv.astype(np.float64) - image
    axes[0, col].imshow(adv)
    axes[0, col].set_title(f"adversarial ε={eps:g}", fontsize=8)
    axes[1, col].imshow(np.clip(delta * (127 / eps) + 128, 0, 255).astype(np.uint8))
    axes[1, col].set_title(f"δ×{127 / eps:.3g}+128", fontsize=8)
  segmentation_cmap = matplotlib.colormaps["tab20"]
  for col, task in enumerate(tasks):
    clean = _prediction(task, preds_clean[task], "preds_clean")
    adv = _prediction(task, preds_adv[task], "preds_adv")
    if task == _SEGMENTATION:
      top = int(max(clean.max(), adv.max(), 1))
      kwargs = dict(cmap=segmentation_cmap, vmin=0, vmax=max(top, 19), interpolation="nearest")
    elif task == _NORMAL:
      kwargs = {}
    else:
      kwargs = dict(cmap="viridis", vmin=min(clean.min(), adv.min()),
                    vmax=max(clean.max(), adv.max()))
    for row, value, when in ((2, clean, "clean"), (3, adv, f"attacked ε={adv_eps:g}")):
      axes[row, col].imshow(value, **kwargs)
      axes[row, col].set_title(f"{rec_lib.task_label(task)}, {when}", fontsize=8)
  return fig
