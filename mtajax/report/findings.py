"""The report's findings: what the numbers say about the paper's claims, computed, not pre-written.

Values are compared at the tables' precision (2 decimals): equal there counts as a tie.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
from scipy import stats

from mtajax.report import records as rec_lib
from mtajax.report import tables
from mtajax.report.records import Record

# At fewer distinct sharing levels a rank correlation is flagged as weak evidence.
_FEW_LEVELS = 4


class Count(NamedTuple):
  """GB-MTA against one baseline over (model, attack) pairs where both were run."""
  wins: int
  ties: int
  losses: int

  @property
  def pairs(self) -> int:
    return self.wins + self.ties + self.losses


def _arps(records: Sequence[Record], model: str, attack: str, eps: float,
          tasks: Sequence[str]) -> dict[str, float]:
  of_pair = rec_lib.select(records, model=model, attack=attack, eps=eps)
  return {d: round(float(rec_lib.lookup(of_pair, model, attack, d, eps)["arp"]), 2)
          for d in rec_lib.directions_present(of_pair, tasks)}


def strongest(records: Sequence[Record], eps: float, *, clean_trained: bool = True
              ) -> list[tuple[rec_lib.ModelInfo, str, list[str], float]]:
  """Per (model, base attack): the directions with the highest ARP (several on a tie) and it."""
  out = []
  for info in rec_lib.models(records, clean_trained=clean_trained):
    for attack in rec_lib.attacks_present(rec_lib.select(records, model=info.model, eps=eps)):
      arps = _arps(records, info.model, attack, eps, info.tasks)
      best = max(arps.values())
      out.append((info, attack, [d for d, v in arps.items() if v == best], best))
  return out


def gbmta_counts(records: Sequence[Record], eps: float, *, clean_trained: bool = True
                 ) -> dict[str, Count]:
  """GB-MTA vs Total, SignTotal, the best Single-x and the best of all other directions."""
  tallies = {k: [0, 0, 0] for k in ("Total", "SignTotal", "the best Single-x",
                                    "the best other direction")}
  for info in rec_lib.models(records, clean_trained=clean_trained):
    for attack in rec_lib.attacks_present(rec_lib.select(records, model=info.model, eps=eps)):
      arps = _arps(records, info.model, attack, eps, info.tasks)
      if "gbmta" not in arps:
        continue
      singles = [v for d, v in arps.items() if rec_lib.single_task(d)]
      others = [v for d, v in arps.items() if d != "gbmta"]
      rivals = {"Total": arps.get("total"), "SignTotal": arps.get("sign_total"),
                "the best Single-x": max(singles) if singles else None,
                "the best other direction": max(others) if others else None}
      for name, rival in rivals.items():
        if rival is not None:
          g = arps["gbmta"]
          tallies[name][0 if g > rival else 1 if g == rival else 2] += 1
  return {k: Count(*v) for k, v in tallies.items() if sum(v)}


def rank_correlation(x: Sequence[float], y: Sequence[float]) -> float | None:
  """Spearman's ρ, or None when it is undefined (fewer than 3 points or a constant variable)."""
  if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
    return None
  rho = float(stats.spearmanr(x, y).statistic)
  return rho if np.isfinite(rho) else None


def _directions(names: Sequence[str]) -> str:
  return " = ".join(rec_lib.direction_label(d) for d in names)


def _strongest_section(records: Sequence[Record], eps: float) -> list[str]:
  lines = [f"**Strongest direction per model and base attack** (ε={eps:g}):", ""]
  per_model: dict[str, list[str]] = {}
  for info, attack, best, value in (strongest(records, eps) +
                                    strongest(records, eps, clean_trained=False)):
    name = info.label if info.adv_training == rec_lib.NO_AT else (
        f"{info.label} [{rec_lib.adv_training_label(info.adv_training)}]")
    per_model.setdefault(name, []).append(
        f"{rec_lib.attack_label(attack)} → {_directions(best)} ({value:.2f})")
  lines += [f"- {name}: " + "; ".join(items) for name, items in per_model.items()]
  return lines + [""]


def _verdict(wins: int, pairs: int) -> str:
  if wins == pairs:
    return "holds in every pair"
  if 2 * wins > pairs:
    return "holds in most pairs but not all"
  return "does not hold in most pairs"


def _gbmta_section(records: Sequence[Record], eps: float) -> list[str]:
  lines = []
  for clean_trained, who in ((True, "clean-trained models"),
                             (False, "adversarially trained models")):
    counts = gbmta_counts(records, eps, clean_trained=clean_trained)
    if not counts:
      continue
    lines += [f"**GB-MTA vs the other directions, {who}** (ε={eps:g}; (model, base attack) "
              "pairs where both were run):", ""]
    lines += [f"- vs {name}: GB-MTA higher in {c.wins}, tied in {c.ties}, lower in {c.losses} "
              f"of {c.pairs}" for name, c in counts.items()]
    if "the best other direction" in counts:
      c = counts["the best other direction"]
      lines += ["", f"The paper's finding that GB-MTA is the strongest direction "
                    f"{_verdict(c.wins, c.pairs)} here: strictly strongest in {c.wins} of "
                    f"{c.pairs} pairs, tied for strongest in {c.ties}."]
    lines.append("")
  if not lines:
    lines = ["No GB-MTA records at this ε; GB-MTA cannot be compared.", ""]
  return lines


def _sign(rho: float | None) -> str:
  if rho is None:
    return "undefined (too few points or a constant variable)"
  trend = ("grows with sharing, as in the paper" if rho > 0 else
           "falls with sharing, unlike the paper" if rho < 0 else "shows no trend")
  return f"ρ = {rho:+.2f}: {trend}"


def _transfer_section(records: Sequence[Record], eps: float, attack: str | None) -> list[str]:
  try:
    attack = rec_lib.transfer_attack(records, eps, attack)
  except rec_lib.MissingData as e:
    return [f"Transferability: not assessed ({e}).", ""]
  values = tables.transferabilities(records, attack, eps)
  levels = {m.model: m.sharing_level for m in rec_lib.models(records)}
  distinct = sorted({levels[m] for m in values})
  lines = [f"**Transferability vs sharing level** ({rec_lib.attack_label(attack)} Single-x, "
           f"ε={eps:g}; Spearman ρ between sharing level and transferability over "
           f"{len(values)} models at {len(distinct)} sharing levels):", ""]
  by_level = tables.transfer_by_level(records, attack, eps)
  for task in rec_lib.attacked(records)[0]["tasks"]:
    pairs = [(levels[m], v[task]) for m, v in values.items() if v.get(task) is not None]
    if not pairs:
      continue
    rho = rank_correlation(*zip(*pairs))
    lo, hi = min(by_level[task]), max(by_level[task])
    lines.append(f"- {rec_lib.direction_label(f'single_{task}')}: {_sign(rho)} "
                 f"(mean {by_level[task][lo]:.2f} at {lo}L, {by_level[task][hi]:.2f} at {hi}L)")
  means = [(levels[m], float(np.mean([x for x in v.values() if x is not None])))
           for m, v in values.items() if any(x is not None for x in v.values())]
  if means:
    lines.append(f"- mean over attacked tasks: {_sign(rank_correlation(*zip(*means)))}")
  if len(distinct) < _FEW_LEVELS:
    lines.append(f"- Caveat: only {len(distinct)} distinct sharing levels; a rank correlation "
                 "on so few models is weak evidence either way.")
  return lines + [""]


def _at_section(records: Sequence[Record], eps: float) -> list[str]:
  lines = []
  for base in rec_lib.models(records):
    try:
      _, variants = tables.at_variants(records, base.model)
    except rec_lib.MissingData:
      continue
    for attack in rec_lib.attacks_present(rec_lib.select(records, eps=eps)):
      before = rec_lib.lookup(records, base.model, attack, "gbmta", eps)
      if before is None:
        continue
      for variant in variants:
        after = rec_lib.lookup(records, variant.model, attack, "gbmta", eps)
        if after is None:
          continue
        a, b = round(float(before["arp"]), 2), round(float(after["arp"]), 2)
        change = ("dropped" if b < a else "rose" if b > a else "did not change")
        lines.append(f"- {base.label} [{rec_lib.adv_training_label(variant.adv_training)}]: "
                     f"{rec_lib.attack_label(attack)} GB-MTA ARP {change}, {a:.2f} (w/o AT) → "
                     f"{b:.2f}")
  if not lines:
    return []
  return [f"**Adversarial training** (GB-MTA ARP at ε={eps:g}, vs the same layout w/o AT):",
          ""] + lines + [""]


def findings(records: Sequence[Record], eps: float | None = None,
             attack_for_transfer: str | None = None) -> str:
  """Markdown findings for one (dataset, backbone) group of records at one ε (default as the
  tables): the strongest direction per model and base attack, GB-MTA's win/tie/loss counts
  against Total, SignTotal and Single-x, the sign of the rank correlation of transferability with
  the sharing level, and GB-MTA's ARP change under adversarial training."""
  records = rec_lib.check(records)
  if not rec_lib.attacked(records):
    return "No attacked records: nothing to report.\n"
  eps = rec_lib.default_eps(records) if eps is None else eps
  if not rec_lib.select(rec_lib.attacked(records), eps=eps):
    return f"No attacked records at ε={eps:g}: nothing to report.\n"
  lines = (_strongest_section(records, eps) + _gbmta_section(records, eps) +
           _transfer_section(records, eps, attack_for_transfer) + _at_section(records, eps))
  return "\n".join(lines).rstrip() + "\n"
