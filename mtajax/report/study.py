"""The directions × attack-losses study: a table, a figure and findings from result records.

Records carry ``attack_loss`` (absent in older records = ``'default'``, the training loss). The
paper-layout tables use only default-loss records; this section compares every (direction, attack
loss) pair the records hold, per base attack, by ARP at one ε (mean over the clean-trained models).
"""

from __future__ import annotations

from typing import Sequence

from matplotlib import figure as mpl_figure
import numpy as np

from mtajax.report import figures
from mtajax.report import records as rec_lib
from mtajax.report import tables
from mtajax.report.records import Record

DEFAULT_LOSS = "default"
BALANCERS = ("mgda", "pcgrad", "imtl_g", "cagrad", "nash_mtl", "upgrad", "aligned_mtl")


def attack_loss(rec: Record) -> str:
  return rec.get("attack_loss") or DEFAULT_LOSS


def default_loss(records: Sequence[Record]) -> list[Record]:
  """The records of the training loss (what the paper-layout tables show)."""
  return [r for r in records if attack_loss(r) == DEFAULT_LOSS]


def applies(records: Sequence[Record]) -> bool:
  """Whether the records hold a balancer direction or a non-default attack loss."""
  return any(r["direction"] in BALANCERS or attack_loss(r) != DEFAULT_LOSS
             for r in rec_lib.attacked(records))


def _pairs(records: Sequence[Record]) -> list[tuple[str, str]]:
  """(direction, loss) pairs present: shared directions first, then balancers, then the rest."""
  order = list(rec_lib.SHARED_DIRECTIONS) + list(BALANCERS)
  present = {(r["direction"], attack_loss(r)) for r in records}

  def rank(pair):
    d, loss = pair
    return (order.index(d) if d in order else len(order), d, loss != DEFAULT_LOSS, loss)
  return sorted(present, key=rank)


def _chosen(records: Sequence[Record], eps: float | None) -> tuple[list[Record], float]:
  eps = rec_lib.default_eps(records) if eps is None else eps
  chosen = [r for r in rec_lib.select(rec_lib.attacked(records), eps=eps,
                                      adv_training=rec_lib.NO_AT)
            if rec_lib.single_task(r["direction"]) is None and r["arp"] is not None]
  if not chosen:
    raise rec_lib.MissingData(f"no multi-task direction records at ε={eps:g}")
  return chosen, eps


def mean_arp(records: Sequence[Record], attack: str, direction: str, loss: str,
             models: Sequence[str]) -> float | None:
  """ARP averaged over ``models``; None unless every model has the record (last one wins)."""
  values = {}
  for r in records:
    if r["attack"] == attack and r["direction"] == direction and attack_loss(r) == loss:
      values[r["model"]] = float(r["arp"])
  if not models or any(m not in values for m in models):
    return None
  return float(np.mean([values[m] for m in models]))


def directions_table(records: Sequence[Record], eps: float | None = None) -> str:
  """ARP (%) per (direction, attack loss) row; per attack a column per model and their mean."""
  chosen, eps = _chosen(records, eps)
  infos = rec_lib.models(chosen)
  attacks = rec_lib.attacks_present(chosen)
  header = ["Direction", "Attack loss"]
  for a in attacks:
    header += [f"{rec_lib.attack_label(a)} {m.label}" for m in infos]
    header += [f"{rec_lib.attack_label(a)} mean"]
  pairs = _pairs(chosen)
  columns = []
  for a in attacks:
    for m in infos:
      columns.append([mean_arp(chosen, a, d, l, [m.model]) for d, l in pairs])
    columns.append([mean_arp(chosen, a, d, l, [m.model for m in infos]) for d, l in pairs])
  cells = [tables.format_cells(col) for col in columns]
  rows = [[rec_lib.direction_label(d), l] + [c[i] for c in cells]
          for i, (d, l) in enumerate(pairs)]
  return tables.markdown(header, rows)


def figure_directions(records: Sequence[Record], eps: float | None = None) -> mpl_figure.Figure:
  """Mean ARP over the models: a bar per attack loss, grouped by direction, a panel per attack."""
  chosen, eps = _chosen(records, eps)
  models = [m.model for m in rec_lib.models(chosen)]
  attacks = rec_lib.attacks_present(chosen)
  pairs = _pairs(chosen)
  directions = list(dict.fromkeys(d for d, _ in pairs))
  losses = list(dict.fromkeys(l for _, l in sorted(pairs, key=lambda p: p[1] != DEFAULT_LOSS)))
  fig_width = 0.6 + 0.9 * len(directions) * len(attacks)
  fig = figures.new_figure(fig_width, 3.4)
  axes = fig.subplots(1, len(attacks), squeeze=False, sharey=True)[0]
  width = 0.8 / len(losses)
  x = np.arange(len(directions))
  for ax, attack in zip(axes, attacks):
    for i, loss in enumerate(losses):
      values = [mean_arp(chosen, attack, d, loss, models) for d in directions]
      ax.bar(x + (i - (len(losses) - 1) / 2) * width,
             [np.nan if v is None else v for v in values], width, label=loss)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xticks(x, [rec_lib.direction_label(d) for d in directions], rotation=30)
    ax.set_title(f"{rec_lib.attack_label(attack)}, ε={eps:g}", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
  axes[0].set_ylabel(f"mean ARP (%) over {len(models)} models")
  axes[-1].legend(fontsize=7, title="attack loss", title_fontsize=7)
  return fig


def findings(records: Sequence[Record], eps: float | None = None) -> str:
  """What the table says: the strongest pair, GB-MTA against the balancers, the best loss."""
  chosen, eps = _chosen(records, eps)
  models = [m.model for m in rec_lib.models(chosen)]
  lines = []
  for attack in rec_lib.attacks_present(chosen):
    label = rec_lib.attack_label(attack)
    scores = {p: mean_arp(chosen, attack, *p, models) for p in _pairs(chosen)}
    scores = {p: v for p, v in scores.items() if v is not None}
    if not scores:
      continue
    (d, l), best = max(scores.items(), key=lambda kv: kv[1])
    lines.append(f"- {label}, ε={eps:g}: strongest is {rec_lib.direction_label(d)} with the "
                 f"{l} loss, mean ARP {best:.2f}% over {len(models)} models.")
    per_direction = {}
    for (d, l), v in scores.items():
      per_direction[d] = max(per_direction.get(d, -np.inf), v)
    training = {d: v for (d, l), v in scores.items() if l == DEFAULT_LOSS}
    for which, values in (("best loss", per_direction), ("training loss", training)):
      if "gbmta" in values and set(values) & set(BALANCERS):
        balancer = max((d for d in values if d in BALANCERS), key=values.get)
        gap = values["gbmta"] - values[balancer]
        verdict = "still the strongest" if gap >= 0 else "beaten"
        lines.append(f"  GB-MTA ({which}) is {verdict} against the balancers: "
                     f"{values['gbmta']:.2f}% vs {rec_lib.direction_label(balancer)} "
                     f"{values[balancer]:.2f}% ({gap:+.2f} points).")
    by_loss = {}
    for (d, l), v in scores.items():
      by_loss.setdefault(l, []).append(v)
    if len(by_loss) > 1:
      means = {l: float(np.mean(v)) for l, v in by_loss.items()}
      top = max(means, key=means.get)
      lines.append(f"  Averaged over directions, the {top} loss is strongest ("
                   + ", ".join(f"{l} {v:.2f}%" for l, v in sorted(means.items(),
                                                                  key=lambda kv: -kv[1]))
                   + ").")
  if not lines:
    raise rec_lib.MissingData(f"no direction present for every model at ε={eps:g}")
  return "\n".join(lines) + "\n"
