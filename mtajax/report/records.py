"""Result records (one dict per line of ``results.jsonl``): loading, checks and shared lookups.

A record is one (model, attack, direction, ε) evaluation; ``attack == 'clean'`` marks a model's
clean baseline. The report's tables, figures and findings are pure functions of a list of records.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

from mtajax.models import layouts

Record = Mapping[str, Any]

REQUIRED = ("key", "model", "dataset", "backbone", "layout", "sharing_level", "adv_training",
            "attack", "direction", "eps", "tasks", "arp", "arp_per_task")
ATTACKS = ("fgsm", "pgd", "apgd", "auto_sage")
ATTACK_LABELS = {"fgsm": "FGSM", "pgd": "PGD", "apgd": "APGD", "auto_sage": "Auto-SAGE"}
SHARED_DIRECTIONS = ("total", "sign_total", "gbmta")
DIRECTION_LABELS = {"total": "Total", "sign_total": "SignTotal", "gbmta": "GB-MTA",
                    "mgda": "MGDA", "pcgrad": "PCGrad", "imtl_g": "IMTL-G", "cagrad": "CAGrad",
                    "nash_mtl": "Nash-MTL", "upgrad": "UPGrad", "aligned_mtl": "Aligned-MTL"}
TASK_LABELS = {"segment_semantic": "Segm", "normal": "Norm", "depth_zbuffer": "Dept",
               "keypoints2d": "Keyp", "edge_texture": "Edge"}
NO_AT = "none"
CLEAN = "clean"


class MissingData(ValueError):
  """The records hold nothing for the requested table or figure (the report skips it)."""


class ModelInfo(NamedTuple):
  """One model, as the rows of the tables show it."""
  model: str
  label: str
  sharing_level: int
  layout: str
  adv_training: str
  tasks: tuple[str, ...]


def load(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
  """Reads a JSON-lines results file (blank lines skipped) and checks every record."""
  records = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{number} is not a JSON object ({e.msg}); remove or repair "
                         "that line.") from None
  return check(records)


def _finite(value: Any, what: str) -> None:
  if not isinstance(value, (int, float)) or not math.isfinite(value):
    raise ValueError(f"{what} is {value!r}; it must be a finite number (re-run that evaluation).")


def check(records: Iterable[Record]) -> list[dict[str, Any]]:
  """Checks the fields the report uses (finite ARPs, known attacks/directions); returns a list."""
  out = []
  for rec in records:
    if not isinstance(rec, Mapping):
      raise ValueError(f"A record must be a dict, got {type(rec).__name__}; pass parsed JSON.")
    missing = [k for k in REQUIRED if k not in rec]
    if missing:
      raise ValueError(f"Record {rec.get('key')!r} lacks {missing}; write records with the "
                       "mtajax.results schema.")
    name = f"record {rec['key']!r}"
    if (not isinstance(rec["tasks"], (list, tuple)) or not rec["tasks"]
        or not all(isinstance(t, str) for t in rec["tasks"])):
      raise ValueError(f"tasks of {name} is {rec['tasks']!r}; it must be a non-empty list of "
                       "task names.")
    if rec["attack"] != CLEAN and rec["attack"] not in ATTACKS:
      raise ValueError(f"{name} has unknown attack {rec['attack']!r}; use one of "
                       f"{(CLEAN,) + ATTACKS}.")
    _finite(rec["eps"], f"eps of {name}")
    if rec["attack"] != CLEAN:
      direction = rec["direction"]
      if not isinstance(direction, str) or not direction or (
          single_task(direction) is not None and single_task(direction) not in rec["tasks"]):
        raise ValueError(f"{name} has direction {direction!r}; use a direction name "
                         f"(mtajax.directions.registered()) or single_<task> with a task in "
                         f"{rec['tasks']}.")
      _finite(rec["arp"], f"ARP of {name}")
      per_task = rec["arp_per_task"]
      if not isinstance(per_task, Mapping) or set(per_task) != set(rec["tasks"]):
        raise ValueError(f"arp_per_task of {name} must map every task in {rec['tasks']} to its "
                         f"ARP, got {per_task!r}.")
      for task, value in per_task.items():
        _finite(value, f"ARP-{task} of {name}")
    out.append(dict(rec))
  return out


def single_task(direction: str | None) -> str | None:
  """x for a ``'single_<x>'`` direction, else None."""
  if direction and direction.startswith("single_"):
    return direction[len("single_"):]
  return None


def task_label(task: str) -> str:
  """The paper's short task name (``'segment_semantic'`` -> ``'Segm'``)."""
  return TASK_LABELS.get(task, task)


def direction_label(direction: str, *, short: bool = False) -> str:
  """``'Single-Segm'`` (``short``: ``'Segm'``, as paper Table 1), ``'Total'``, ..."""
  task = single_task(direction)
  if task is None:
    return DIRECTION_LABELS.get(direction, direction)
  return task_label(task) if short else f"Single-{task_label(task)}"


def attack_label(attack: str) -> str:
  return ATTACK_LABELS.get(attack, attack)


def adv_training_label(adv_training: str) -> str:
  """``'fat:gbmta:eps8'`` -> ``'FAT GB-MTA ε=8'``; ``'none'`` -> ``'w/o AT'``."""
  if adv_training == NO_AT:
    return "w/o AT"
  parts = []
  for part in adv_training.split(":"):
    if part.startswith("eps") and part[3:].replace(".", "", 1).isdigit():
      parts.append(f"ε={part[3:]}")
    elif part in DIRECTION_LABELS or single_task(part):
      parts.append(direction_label(part))
    else:
      parts.append(part.upper() if len(part) <= 4 else part)
  return " ".join(parts)


def fmt(value: float | None) -> str:
  """Two decimals, as the paper's tables; ``'–'`` for a missing value."""
  return "–" if value is None else f"{value:.2f}"


def attacked(records: Iterable[Record]) -> list[Record]:
  return [r for r in records if r["attack"] != CLEAN]


def same_eps(a: float, b: float) -> bool:
  return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)


def eps_values(records: Iterable[Record]) -> list[float]:
  """Sorted distinct ε of the attacked records."""
  values: list[float] = []
  for rec in attacked(records):
    if not any(same_eps(rec["eps"], v) for v in values):
      values.append(float(rec["eps"]))
  return sorted(values)


def default_eps(records: Iterable[Record]) -> float:
  """The largest ε ≤ 8 present (the paper's tables use ε = 8), else the smallest one."""
  values = eps_values(records)
  if not values:
    raise MissingData("no attacked records")
  below = [v for v in values if v <= 8]
  return below[-1] if below else values[0]


def attacks_present(records: Iterable[Record]) -> list[str]:
  """Base attacks of the records, in the paper's order."""
  names = {r["attack"] for r in attacked(records)}
  return [a for a in ATTACKS if a in names]


def directions_present(records: Iterable[Record], tasks: Sequence[str]) -> list[str]:
  """Directions of the records: Single-x in task order, Total, SignTotal, GB-MTA, then the
  other (registered) directions by name."""
  names = {r["direction"] for r in attacked(records)}
  order = [f"single_{t}" for t in tasks] + list(SHARED_DIRECTIONS)
  return [d for d in order if d in names] + sorted(names - set(order) - {None})


def select(records: Iterable[Record], *, model: str | None = None, attack: str | None = None,
           direction: str | None = None, eps: float | None = None,
           adv_training: str | None = None) -> list[Record]:
  """Records matching every given field (ε compared with a tolerance)."""
  return [r for r in records
          if (model is None or r["model"] == model)
          and (attack is None or r["attack"] == attack)
          and (direction is None or r["direction"] == direction)
          and (eps is None or same_eps(r["eps"], eps))
          and (adv_training is None or r["adv_training"] == adv_training)]


def lookup(records: Sequence[Record], model: str, attack: str, direction: str,
           eps: float) -> Record | None:
  """The record of one table cell; of duplicates (e.g. two configs) the last one wins."""
  found = select(records, model=model, attack=attack, direction=direction, eps=eps)
  return found[-1] if found else None


def model_label(rec: Record) -> str:
  """Layout index (or model id) with the paper's AS / IND tag."""
  layout = layouts.parse_layout(rec["layout"])
  base = rec["model"] if rec.get("layout_idx") is None else str(rec["layout_idx"])
  if layouts.sharing_level(layout) == layout.num_blocks:
    return f"{base} (AS)"
  if layouts.is_independent(layout):
    return f"{base} (IND)"
  return base


def models(records: Iterable[Record], *, clean_trained: bool | None = True) -> list[ModelInfo]:
  """Distinct models, by sharing level high → low (then label); filtered by training kind."""
  seen: dict[str, ModelInfo] = {}
  for rec in records:
    if clean_trained is not None and (rec["adv_training"] == NO_AT) != clean_trained:
      continue
    if rec["model"] not in seen:
      seen[rec["model"]] = ModelInfo(rec["model"], model_label(rec), int(rec["sharing_level"]),
                                     rec["layout"], rec["adv_training"], tuple(rec["tasks"]))
  return sorted(seen.values(), key=lambda m: (-m.sharing_level, m.label, m.adv_training))


def groups(records: Iterable[Record]
           ) -> dict[tuple[str, str, tuple[str, ...]], list[Record]]:
  """Records split by (dataset, backbone, tasks): each group is one paper table."""
  out: dict[tuple[str, str, tuple[str, ...]], list[Record]] = {}
  for rec in records:
    out.setdefault((rec["dataset"], rec["backbone"], tuple(rec["tasks"])), []).append(rec)
  return out


def transfer_attack(records: Sequence[Record], eps: float, attack: str | None = None) -> str:
  """The attack of Table 12 / Fig. 4: ``attack`` if given, else APGD when it has Single-x records
  at ε (as the paper), else PGD, else the first base attack that has them."""
  with_single = {r["attack"] for r in select(attacked(records), eps=eps)
                 if single_task(r["direction"])}
  if attack is not None:
    if attack not in with_single:
      raise MissingData(f"no Single-x records of {attack_label(attack)} at ε={eps:g}")
    return attack
  for name in ("apgd", "pgd") + ATTACKS:
    if name in with_single:
      return name
  raise MissingData(f"no Single-x records at ε={eps:g}")
