"""Robust evaluation of a multi-task model: an attack suite, the worst case per image and per task.

``robust.evaluate(predict, state, batches, tasks, eps=..., bounds=..., key=...)`` runs every
candidate of a *suite* (a list of ``(attack, direction, options)``) on every image, scores each
image with ``s_b`` (:func:`mtajax.tasks.per_image.score`) and keeps, per image, the candidate with
the largest ``s_b`` where that raises the dataset ARP (:func:`mtajax.worst_case.select`: the robust
ARP is never below the ARP of any candidate run alone on the same images). The clean input is a
candidate too (it lies in the ε-ball). Per task, the same search over that task's drops gives the
*per-task envelope*: how far each task alone can be pushed. **Nothing is averaged over candidates:
the rule is the worst case, per image.**

Compile once: one compiled attack per (model, attack, direction, options); ε and the PRNG key are
traced, so restarts and an ε sweep reuse it. The attack loops run as the platform's evaluation
default (:func:`mtajax.platform.evaluation_loop`: on XLA:CPU a Python loop whose evaluation
programs every member with the same direction and attack loss shares).

Candidates run cheapest first, batched over the images still under attack (like AutoAttack): with
``threshold``, an image whose best ``s_b`` reaches it is not attacked again.

Convergence is shown, not assumed: the result holds the robust ARP after each candidate against the
passes spent (``trajectory``), per candidate the share of images whose returned point is its
attack's last iterate (``at_last_step``) and a ``converged`` flag (:func:`convergence`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mtajax import attacks
from mtajax import directions as directions_lib
from mtajax import dispatch
from mtajax import evaluate as evaluate_lib
from mtajax import parallel
from mtajax import phases
from mtajax import platform
from mtajax import results
from mtajax import tasks as tasks_lib
from mtajax import worst_case
from mtajax.attacks import loop as loop_lib
from mtajax.tasks import per_image

Member = tuple[str, str, Mapping[str, Any]]  # (attack, direction, options)

# fra31/auto-attack's APGD: 2ε initial step, per-sample, restart from the best point, random start.
APGD_AA = {"variant": "autoattack", "random_start": True}


def _apgd(direction: str, num_steps: int, attack_loss: str = "default",
          restarts: int = 1) -> Member:
  options = {**APGD_AA, "num_steps": num_steps}
  if attack_loss != "default":
    options["attack_loss"] = attack_loss
  if restarts > 1:
    options["restarts"] = restarts
  return ("apgd", direction, options)


def scaled_suite(suite: str | Sequence[Member], factor: int,
                 restarts: int | None = None) -> tuple[Member, ...]:
  """The suite with ``factor`` times the steps (default 10; FGSM keeps its one) and ``restarts``
  (default ``factor``) times the restarts."""
  members = SUITES[suite] if isinstance(suite, str) else suite
  out = []
  for attack, direction, options in members:
    options = {**options,
               "restarts": (factor if restarts is None else restarts) *
                           int(options.get("restarts", 1))}
    if attack != "fgsm":
      options["num_steps"] = factor * int(options.get("num_steps", 10))
    out.append((attack, direction, options))
  return tuple(out)


# The first design (benchmarks/suite_design.py, docs/robust.md#the-suites-chosen-by-measurement):
# the variety of attack losses and of step budgets (APGD's step-size schedule) carried the robust
# ARP, restarts of one attack little. 1,511 passes per image (3 tasks).
FAST: tuple[Member, ...] = (
    _apgd("gbmta", 20, restarts=2), _apgd("gbmta", 20, "segpgd"), _apgd("total", 20),
    _apgd("single", 20),
    _apgd("gbmta", 50), _apgd("gbmta", 50, "segpgd"), _apgd("gbmta", 50, "js"),
    _apgd("gbmta", 50, "cospgd"),
    _apgd("gbmta", 100, "segpgd"), _apgd("gbmta", 100, "js"), _apgd("gbmta", 100, "cospgd"),
    _apgd("gbmta", 100, "js_relative"),
)
# FAST's members run 6x longer, twice each (17,821 passes per image): measured on an H200 and the
# 2-core machine against every candidate run for the design (up to 112,057 passes per image), it
# is within 0.1-0.4 point of them where FAST is 2-3 points below; `thorough` (12x) is 1.07 above
# it on AS at eps 8, and the worst case keeps rising with the number of candidate runs (spending
# these passes on more, shorter runs adds only 0.05-0.12; docs/robust.md).
STANDARD: tuple[Member, ...] = scaled_suite(FAST, 6, restarts=2)
SUITES: dict[str, tuple[Member, ...]] = {
    "standard": STANDARD,
    # 12x standard's passes: its members 4x longer, 3x as many restarts.
    "thorough": scaled_suite(STANDARD, 4, restarts=3),
    # The previous `standard`, for a CPU budget: 2-3 points below `standard` on the quickstart's
    # models at ε = 8.
    "fast": FAST,
    # The main job's suite (its 300 s budget): the `standard` of the first release (20 steps),
    # 6-8 ARP points below `standard` on the quickstart's models; reports name it and its gap.
    "quick": (
        _apgd("gbmta", 20, restarts=2), _apgd("total", 20), _apgd("single", 20),
        _apgd("gbmta", 20, "segpgd"),
    ),
    # CI-sized: two short runs.
    "smoke": (_apgd("gbmta", 2), _apgd("total", 2)),
}


def register_suite(name: str, members: Sequence[Member]) -> None:
  """Adds a named suite; ``'single'`` as a direction expands to ``single_<task>`` for every task."""
  SUITES[name] = tuple(members)


# The rule of `converged`: over the last CONVERGENCE_BUDGET of the passes per image the robust ARP
# rose by less than CONVERGENCE_GAIN points, no candidate that is the worst case of an image
# returned its last iterate as its best point on CONVERGENCE_LAST_STEP or more of its images, and
# the second half of the members' restarts raised the (polished) robust ARP by less than
# CONVERGENCE_GAIN points (`restart_gain`: the worst case keeps rising with the number of candidate
# runs even where no attack gets stronger; docs/robust.md).
CONVERGENCE_BUDGET = 0.25  # share of the passes per image (X)
CONVERGENCE_GAIN = 0.1  # ARP points
CONVERGENCE_LAST_STEP = 0.2  # share of a candidate's images (Y)
# The trajectory's last point: the worst case after the polishing local search
# (:func:`mtajax.worst_case.polish`), which spends no attack passes; the rule compares like with
# like and leaves it out.
POLISH = "polished search"


def convergence(trajectory: Sequence[Mapping[str, Any]], at_last_step: Mapping[str, float | None],
                wins: Mapping[str, int], restart_gain: float | None = None) -> str | None:
  """None when the evaluation converged, else why not (one line).

  The robust ARP is known after each candidate: the gain of the last ``CONVERGENCE_BUDGET`` of the
  budget is the final ARP minus the ARP at the last point that had spent at most
  ``1 - CONVERGENCE_BUDGET`` of the final passes per image (a conservative reading: a candidate
  that straddles the cut counts whole). Converged: that gain < ``CONVERGENCE_GAIN`` points,
  every candidate with ``wins`` has ``at_last_step`` < ``CONVERGENCE_LAST_STEP`` (None: the attack
  always returns its last iterate, so the share says nothing and does not count), and
  ``restart_gain`` (:attr:`RobustEvaluation.restart_gain`; None: not measured — no member has two
  restarts, or a record older than it) < ``CONVERGENCE_GAIN``.
  """
  trajectory = [p for p in trajectory if p["candidate"] != POLISH]  # search, not attack compute
  final = trajectory[-1]
  cut = (1 - CONVERGENCE_BUDGET) * final["passes_per_image"]
  before = ([p for p in trajectory if p["passes_per_image"] <= cut] or trajectory[:1])[-1]
  gain = final["arp"] - before["arp"]
  if gain >= CONVERGENCE_GAIN:
    return (f"the last {CONVERGENCE_BUDGET:.0%} of the passes per image raised the robust ARP by "
            f"{gain:.2f} points ({before['arp']:.2f} -> {final['arp']:.2f}; rule: < "
            f"{CONVERGENCE_GAIN:g}); use a stronger suite")
  peaked = {c: v for c, v in at_last_step.items()
            if v is not None and wins.get(c, 0) and v >= CONVERGENCE_LAST_STEP}
  if peaked:
    c = max(peaked, key=peaked.get)
    return (f"{c} (worst case of {wins[c]} images) returned its last iterate on "
            f"{peaked[c]:.0%} of its images (rule: < {CONVERGENCE_LAST_STEP:.0%}); give it more "
            "steps")
  if restart_gain is not None and restart_gain >= CONVERGENCE_GAIN:
    return (f"the second half of the members' restarts raised the robust ARP by "
            f"{restart_gain:.2f} points (rule: < {CONVERGENCE_GAIN:g}); more restarts would find "
            "more")
  return None


@dataclasses.dataclass(frozen=True)
class Candidate:
  """One run of the suite: an attack, its direction (index into a Switched attack) and restart."""
  name: str
  program: attacks.Attack
  restart: int
  direction: directions_lib.Direction | None = None  # None: the attack's
  index: int | None = None  # the choice of a Switched attack (traced)

  def passes(self, num_tasks: int) -> int:
    """Forward + backward passes per image, including the forward that scores the result."""
    return self.program.passes(num_tasks, self.direction) + 1


def first_restarts(cands: Sequence[Candidate], k: int, parts: int) -> list[int]:
  """Positions in ``cands`` of the first ``k``/``parts`` (rounded up) of each member's runs by
  restart index; a member is an attack program and direction, its runs the candidates that differ
  only in ``restart``."""
  runs: dict[tuple[Any, ...], list[int]] = {}
  for i, c in enumerate(cands):
    runs.setdefault((c.program, c.direction, c.index), []).append(i)
  keep = set()
  for positions in runs.values():
    positions.sort(key=lambda i: cands[i].restart)
    keep.update(positions[:-(-k * len(positions) // parts)])
  return sorted(keep)


def _last_iterate(cand: Candidate) -> tuple[int, bool]:
  """The ``best_step`` of the candidate's last iterate, and whether its attack returns its best
  iterate (APGD; PGD with ``return_best``) rather than always the last one."""
  if cand.program.attack == "fgsm":
    return 1, False
  keeps_best = cand.program.attack == "apgd" or bool(dict(cand.program.options).get("return_best"))
  return cand.program.num_steps, keeps_best


def _switched(cands: list[Candidate]) -> list[Candidate]:
  """Candidates of FGSM/PGD/APGD with the default loss and equal options share one program whose
  direction (Single-x, Total, GB-MTA) is a traced index (:class:`mtajax.evaluate.Switched`)."""
  def shareable(p: attacks.Attack) -> bool:
    return (p.attack in ("fgsm", "pgd", "apgd") and p.attack_loss == "default"
            and evaluate_lib.switchable(p.direction))

  def group(p: attacks.Attack) -> tuple[Any, ...]:
    return p.attack, p.num_steps, p.options

  groups: dict[tuple[Any, ...], list[directions_lib.Direction]] = {}
  for c in cands:
    if shareable(c.program):
      choices = groups.setdefault(group(c.program), [])
      if c.program.direction not in choices:
        choices.append(c.program.direction)
  out = []
  for c in cands:
    choices = groups.get(group(c.program))
    if not shareable(c.program) or len(choices) < 2:
      out.append(c)
      continue
    switched = evaluate_lib.switched(choices)
    program = dataclasses.replace(c.program, direction=switched)
    out.append(dataclasses.replace(c, program=program, direction=c.program.direction,
                                   index=switched.choices.index(c.program.direction)))
  return out


def candidates(suite: str | Sequence[Member], task_names: Sequence[str], *,
               one_program: bool = False) -> list[Candidate]:
  """The suite's candidates, cheapest first (restarts of a member share its program; with
  ``one_program``, members that differ only in a Single-x / Total / GB-MTA direction too)."""
  if isinstance(suite, str):
    if suite not in SUITES:
      raise ValueError(f"unknown suite {suite!r}; use one of {sorted(SUITES)} or register one with "
                       "mtajax.robust.register_suite.")
    suite = SUITES[suite]
  if not suite:
    raise ValueError("the suite is empty; give at least one (attack, direction, options).")
  out = []
  for member in suite:
    try:
      attack, direction, options = member
      attacks.by_name(attack)
      options = dict(options)
      restarts = int(options.pop("restarts", 1))
      num_steps = options.pop("num_steps", 10)
      attack_loss = options.pop("attack_loss", "default")
      attack_loss = tasks_lib.attack_losses.canonical(attack_loss, task_names)
      names = [f"single_{t}" for t in task_names] if direction == "single" else [direction]
      programs = [attacks.Attack(attack, directions_lib.by_name(n), num_steps, options,
                                 attack_loss) for n in names]
    except (ValueError, TypeError) as e:
      raise ValueError(f"suite member {member!r}: {e}".splitlines()[0]) from None
    for name, program in zip(names, programs):
      for r in range(restarts):
        label = f"{attack}:{name}" + ("" if attack_loss == "default" else
                                      f":{tasks_lib.attack_losses.label(attack_loss)}") + (
            f"#{r}" if restarts > 1 else "")
        out.append(Candidate(label, program, r))
  seen = {}
  for i, c in enumerate(out):  # Same attack and direction with other options: number them.
    seen[c.name] = seen.get(c.name, -1) + 1
    if seen[c.name]:
      out[i] = dataclasses.replace(c, name=f"{c.name}~{seen[c.name]}")
  if one_program:
    out = _switched(out)
  return sorted(out, key=lambda c: c.passes(len(task_names)))


def _attack(state, batch, eps, bounds, key, index, *, predict, tasks, program, loop):
  """One chunk's attacked images and the iteration each was found at."""
  loss_fn = program.loss_fn(functools.partial(predict, state), tasks)
  result = program(loss_fn, batch["image"], batch, eps=eps, bounds=bounds, key=key,
                   example_weight=batch["example_weight"], index=index, loop=loop)
  return jax.lax.stop_gradient(result.x_adv), result.best_step


def _step(state, batch, eps, bounds, key, clean, reference, index, *, predict, tasks, program,
          loop):
  """Attack one chunk (or not), then per-image states, metrics and (attacked) scores."""
  x = batch["image"]
  if program is not None:
    x, best_step = _attack(state, batch, eps, bounds, key, index, predict=predict, tasks=tasks,
                           program=program, loop=loop)
  preds = predict(state, x)
  states = {t.name: per_image.states(t, preds[t.name], batch) for t in tasks}
  metrics = {t.name: per_image.metrics(t, states[t.name], preds[t.name], batch) for t in tasks}
  if program is None:
    return states, metrics, None
  return states, metrics, (*per_image.score(tasks, metrics, clean, reference), best_step)


_compiled = dispatch.jit(_step, static_argnames=("predict", "tasks", "program", "loop"))
_scores = dispatch.jit(per_image.score, static_argnums=0)


@dataclasses.dataclass(frozen=True)
class RobustEvaluation:
  """What :func:`evaluate` measured.

  Attributes:
    clean: clean dataset metrics ``{task: {metric: value}}``.
    worst_case: dataset metrics of the worst-case set (one candidate per image).
    arp: the robust ARP (percent): the ARP of ``worst_case``.
    arp_per_task: ARP-t of the worst-case set.
    envelope: per task, the ARP-t of that task's own worst-case set (≥ ``arp_per_task``).
    candidate_arp: ARP of each candidate alone (None where it did not run on every image).
    wins: per candidate, the images whose worst case it is.
    passes_per_image: forward + backward passes per image spent by the suite (clean pass included).
    seconds: wall time of the evaluation.
    compile_seconds: the part of ``seconds`` JAX spent tracing and compiling (the rest ran).
    images: one record per (image, candidate): scores, per-task drops, metrics, chosen flags.
    suite: the suite's name (``'custom'`` for a list of members).
    trajectory: the robust ARP after the clean pass and after each candidate in run order, with
      the passes per image spent so far: ``[{candidate, passes_per_image, arp}]``, then the
      polished worst case (candidate :data:`POLISH`, no further passes), whose ``arp`` is
      :attr:`arp`.
    at_last_step: per candidate, the share of the images it ran on whose returned point is its
      last iterate (None: its attack always returns the last iterate, or it ran on no image).
    converged: :func:`convergence` found nothing against it.
    restart_gain: the robust ARP minus that over the first half of each member's restarts (both
      after the polishing search; None where no member has two or more restarts).
  """
  clean: dict[str, dict[str, float]]
  worst_case: dict[str, dict[str, float]]
  arp: float
  arp_per_task: dict[str, float]
  envelope: dict[str, float]
  candidate_arp: dict[str, float | None]
  wins: dict[str, int]
  passes_per_image: float
  seconds: float
  images: list[dict[str, Any]]
  suite: str = "custom"
  trajectory: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  at_last_step: dict[str, float | None] = dataclasses.field(default_factory=dict)
  converged: bool | None = None
  compile_seconds: float = 0.0
  restart_gain: float | None = None

  def write_images(self, path: str | Path) -> Path:
    """Writes :attr:`images` as JSON lines (``pandas.read_json(path, lines=True)``), atomically."""
    path = Path(path)
    results.write_lines(path, (json.dumps(r, sort_keys=True) for r in self.images))
    return path


def _collect(batches: Iterable[Mapping[str, np.ndarray]]) -> tuple[dict[str, np.ndarray],
                                                                  np.ndarray, int]:
  """All real images in host memory, each image's batch index, and the batch size.

  Padding examples (``example_weight == 0``, the evaluation loaders' padded last batch) are dropped.
  """
  items = []
  for b in batches:
    b = {k: np.asarray(v) for k, v in b.items()}
    real = b.pop("example_weight", np.ones(len(b["image"]))) > 0
    items.append({k: v[real] for k, v in b.items()})
  if not any(len(b["image"]) for b in items):
    raise ValueError("robust.evaluate() got no batches; check the dataset split and batch size.")
  data = {k: np.concatenate([b[k] for b in items]) for k in items[0]}
  groups = np.concatenate([np.full(len(b["image"]), i) for i, b in enumerate(items)])
  return data, groups, len(items[0]["image"])


def _spent(cands: Sequence[Candidate], available: np.ndarray, size: int,
           num_tasks: int) -> np.ndarray:
  """Passes per image spent after the clean pass and after each candidate (chunks padded to
  ``size``, as they run)."""
  n = available.shape[1]
  per = [n] + [-(-int(available[c].sum()) // size) * size * cand.passes(num_tasks)
               for c, cand in enumerate(cands, 1)]
  return np.cumsum(per) / n


def _at_last_step(cands: Sequence[Candidate], available: np.ndarray,
                  best_step: np.ndarray) -> dict[str, float | None]:
  """Per candidate, the share of its images whose returned point is its last iterate."""
  out = {}
  for c, cand in enumerate(cands, 1):
    last, keeps_best = _last_iterate(cand)
    ran = available[c]
    out[cand.name] = float(np.mean(best_step[c, ran] == last)) if keeps_best and ran.any() else None
  return out


def _chunks(indices: np.ndarray, size: int) -> Iterable[tuple[np.ndarray, int]]:
  """Fixed-size chunks of ``indices``, the last one padded by repeating its last image."""
  for start in range(0, len(indices), size):
    idx = indices[start:start + size]
    yield np.concatenate([idx, np.full(size - len(idx), idx[-1])]), len(idx)


@dataclasses.dataclass(frozen=True)
class Candidates:
  """Every candidate's per-image results on every image, before the worst case (:func:`summarise`).

  Row 0 of the (C, N) arrays is the clean input; row c the c-th candidate in run order.
  """
  tasks: tuple[tasks_lib.Task, ...]
  names: list[str]  # "clean", then the candidates' names
  candidates: tuple[Candidate, ...]
  clean: dict[str, dict[str, float]]  # clean dataset metrics
  states: worst_case.States  # {task: {leaf: (C, N, ...)}}
  groups: np.ndarray  # (N,) batch of each image
  scores: np.ndarray  # (C, N) s_b
  drops: dict[str, np.ndarray]  # {task: (C, N)}
  available: np.ndarray  # (C, N) ran on the image
  best_step: np.ndarray  # (C, N) iteration of the returned point
  metrics: list[dict[str, dict[str, np.ndarray]]]  # per candidate {task: {metric: (N,)}}
  chunk: int  # images per attacked chunk
  suite: str
  # (C,) wall seconds of each row as it ran (row 0: the clean pass), its compilation included;
  # None in results pickled before this field existed.
  seconds: np.ndarray | None = None

  def members(self, suite: str | Sequence[Member], *, one_program: bool = False) -> list[int]:
    """Rows of the candidates of ``suite`` (a sub-suite of the one that ran: same attack, options
    and restart index give the same candidate), for :func:`summarise`'s ``only``."""
    where = {(c.program, c.restart, c.index): i for i, c in enumerate(self.candidates, 1)}
    rows = []
    for c in candidates(suite, [t.name for t in self.tasks], one_program=one_program):
      row = where.get((c.program, c.restart, c.index))
      if row is None:
        raise ValueError(f"candidate {c.name} of the sub-suite did not run; run a suite that "
                         "contains it.")
      rows.append(row)
    return rows

  def worst_case(self, rows: Sequence[int], *, polish: bool = True) -> worst_case.Selection:
    """The multi-task worst case over the clean input and the candidates ``rows``: the greedy
    search of :func:`mtajax.worst_case.select`, then (``polish``) its polishing local search."""
    rows = [0] + list(rows)
    states = {t: {k: v[rows] for k, v in leaves.items()} for t, leaves in self.states.items()}
    args = (self.tasks, states, self.groups, self.scores[rows], self.available[rows],
            worst_case.arp_objective(self.tasks, self.clean))
    first = worst_case.select(*args)
    return worst_case.polish(*args, first) if polish else first


def summarise(raw: Candidates, *, only: Sequence[int] | None = None,
              seconds: float = float("nan")) -> RobustEvaluation:
  """The worst case per image and per task over the candidates ``only`` (rows of ``raw``, in run
  order; None: all) and the clean input, as a :class:`RobustEvaluation`."""
  rows = [0] + (list(range(1, len(raw.names))) if only is None else list(only))
  tasks, groups = raw.tasks, raw.groups
  states = {t: {k: v[rows] for k, v in leaves.items()} for t, leaves in raw.states.items()}
  available, scores = raw.available[rows], raw.scores[rows]
  drops = {t: v[rows] for t, v in raw.drops.items()}
  names = [raw.names[r] for r in rows]
  cands = [raw.candidates[r - 1] for r in rows[1:]]
  best_step = raw.best_step[rows]
  clean = raw.clean
  n = len(groups)
  select = functools.partial(worst_case.select, tasks, states, groups, available=available)
  objective = worst_case.arp_objective(tasks, clean)
  prefixes = worst_case.accumulate(tasks, states, groups, scores, available, objective)
  multi = worst_case.polish(tasks, states, groups, scores, available, objective, prefixes[-1])
  arp = tasks_lib.arp(clean, multi.metrics, tasks)
  half = [rows[1 + c] for c in first_restarts(cands, 1, 2)]  # each member's first half of runs
  restart_gain = (round(float(multi.value[0] - raw.worst_case(half).value[0]), 2)
                  if len(half) < len(cands) else None)
  spent = _spent(cands, available, raw.chunk, len(tasks))
  trajectory = [{"candidate": name, "passes_per_image": float(p), "arp": float(sel.value[0])}
                for name, p, sel in zip(names, spent, prefixes)]
  trajectory.append({"candidate": POLISH, "passes_per_image": float(spent[-1]),
                     "arp": float(multi.value[0])})
  at_last_step = _at_last_step(cands, available, best_step)
  wins = {name: int(np.sum(multi.choice == c)) for c, name in enumerate(names)}
  why_not = convergence(trajectory, at_last_step, wins, restart_gain)
  envelope, env_choice = {}, {}
  for t in tasks:
    sel = select(drops[t.name], objective=worst_case.arp_objective(tasks, clean, t.name),
                 starts=[multi.choice])
    envelope[t.name], env_choice[t.name] = sel.value[0], sel.choice

  images = []
  for b in range(n):
    for c, r in enumerate(rows):
      if not available[c, b]:
        continue
      images.append({
          "image": b, "batch": int(groups[b]), "candidate": names[c], "s": float(scores[c, b]),
          "best_step": int(best_step[c, b]),
          "chosen": bool(multi.choice[b] == c),
          **{f"drop/{t}": float(drops[t][c, b]) for t in drops},
          **{f"envelope/{t}": bool(env_choice[t][b] == c) for t in drops},
          **{f"{t}/{m}": float(v[b]) for t, ms in raw.metrics[r].items() for m, v in ms.items()}})
  out = RobustEvaluation(
      clean=clean, worst_case=multi.metrics, arp=arp.total, arp_per_task=dict(arp.per_task),
      envelope=envelope,
      candidate_arp={name: None if v is None else v[0] for name, v in zip(names, multi.alone)},
      wins=wins, passes_per_image=trajectory[-1]["passes_per_image"], seconds=seconds,
      images=images, suite=raw.suite if only is None else "custom", trajectory=trajectory,
      at_last_step=at_last_step, converged=why_not is None, restart_gain=restart_gain)
  return out


def evaluate(predict: Callable[[Any, jax.Array], Mapping[str, jax.Array]], state: Any,
             batches: Iterable[Mapping[str, np.ndarray]], tasks: Sequence[tasks_lib.Task], *,
             eps: float, bounds: tuple[Any, Any], suite: str | Sequence[Member] = "standard",
             key: jax.Array, mesh: jax.sharding.Mesh | None = None,
             threshold: float | None = None, loop: loop_lib.Loop | None = None,
             one_program: bool = False, records: str | Path | None = None,
             unroll: Any = None, chunk: int | None = None) -> RobustEvaluation:
  """Robust evaluation of ``predict(state, x)`` on ``batches`` in the ε-ball (L∞ by default).

  Args:
    predict: any pure forward ``predict(state, x) -> {task: (B, h, w, C)}``.
    state: its parameters / model state.
    batches: batches in the CONVENTIONS.md format, all of one size but maybe the last; the
      reference's batch-weighted metrics keep this batching.
    tasks: the tasks to score (each needs a per-image metric, :mod:`mtajax.tasks.per_image`).
    eps: L∞ radius in input units.
    bounds: per-channel input box ``(low, high)``.
    suite: a name in :data:`SUITES` or a list of ``(attack, direction, options)``; options go to
      the attack, plus ``restarts`` (runs with different random starts).
    key: PRNG key of the random starts.
    mesh: data-parallel ``mtajax.parallel.make_mesh`` (None: default device).
    threshold: stop attacking an image once its best ``s_b`` reaches this value (percent).
    loop: how the attacks' iterations run (:mod:`mtajax.attacks.loop`); None: the platform's
      default for evaluations (:func:`mtajax.platform.evaluation_loop`).
    one_program: members that differ only in a Single-x / Total / GB-MTA direction share one
      compiled program (:class:`mtajax.evaluate.Switched`; equal to float rounding).
    records: also write the per-image records (JSON lines) there.
    chunk: images per attacked chunk (None: the batches' size). The metrics keep the batches'
      grouping either way; a larger chunk runs each step on more images at once (on a GPU, 128
      images cost about what 16 do). Per-image attacks (per-image losses, AutoAttack's APGD)
      give each image the same result in any chunk, except that random starts are drawn per
      chunk (other, equally valid, starting points); batch-level ones (the reference APGD's
      step-size decisions, Total's pooled loss) see another batch.
    unroll: the older spelling of ``loop`` (``'host'``: ``'python'``; an int: a scan unrolled that
      many steps).
  """
  start_time = time.perf_counter()
  with phases.CompileClock() as clock:
    raw = attack_all(predict, state, batches, tasks, eps=eps, bounds=bounds, suite=suite,
                     key=key, mesh=mesh, threshold=threshold, loop=loop, one_program=one_program,
                     unroll=unroll, chunk=chunk)
    out = summarise(raw, seconds=time.perf_counter() - start_time)
  out = dataclasses.replace(out, compile_seconds=clock.seconds)
  if not out.converged:
    why_not = convergence(out.trajectory, out.at_last_step, out.wins, out.restart_gain)
    print(f"robust: WARNING: not converged: {why_not}.")
  if records is not None:
    out.write_images(records)
  return out


def check_chunk(chunk: Any) -> int | None:
  """``chunk`` (images per attacked chunk, or None) if valid; else a one-line ValueError."""
  if chunk is not None and not (isinstance(chunk, (int, np.integer)) and chunk >= 1):
    raise ValueError(f"chunk must be a number of images >= 1 or None; got {chunk!r}.")
  return chunk


def attack_all(predict: Callable[[Any, jax.Array], Mapping[str, jax.Array]], state: Any,
               batches: Iterable[Mapping[str, np.ndarray]], tasks: Sequence[tasks_lib.Task], *,
               eps: float, bounds: tuple[Any, Any], suite: str | Sequence[Member] = "standard",
               key: jax.Array, mesh: jax.sharding.Mesh | None = None,
               threshold: float | None = None, loop: loop_lib.Loop | None = None,
               one_program: bool = False, unroll: Any = None,
               chunk: int | None = None) -> Candidates:
  """Runs every candidate of ``suite`` (arguments as :func:`evaluate`'s) and returns their
  per-image results, before the worst case: :func:`summarise` of any sub-suite
  (:meth:`Candidates.members`) equals that sub-suite's own evaluation (without ``threshold``)."""
  if not eps >= 0:
    raise ValueError(f"eps must be >= 0; got {eps}.")
  tasks = tuple(tasks)
  per_image.check(tasks)
  if unroll is not None:
    loop = loop_lib.from_unroll(unroll, loop)[0]
  loop = platform.evaluation_loop() if loop is None else loop_lib.resolve(loop)
  cands = candidates(suite, [t.name for t in tasks], one_program=one_program)
  for c in cands:
    try:
      tasks_lib.attack_losses.check(c.program.attack_loss, tasks)
    except ValueError as e:
      raise ValueError(f"suite candidate {c.name}: {e}") from None
  data, groups, size = _collect(batches)
  n = len(groups)
  if check_chunk(chunk) is not None:
    size = min(int(chunk), n)
  eps_ = jnp.asarray(eps, jnp.float32)
  if mesh is not None:
    state, eps_, bounds = parallel.replicate((state, eps_, bounds), mesh)

  def run(program, idx, k, clean_img=None, reference=None, chunk_key=None, index=None):
    batch = {name: v[idx] for name, v in data.items()}
    batch["example_weight"] = (np.arange(len(idx)) < k).astype(np.float32)  # chunk padding: 0
    extra = None if clean_img is None else {
        f"{t}/{m}": v[idx] for t, ms in clean_img.items() for m, v in ms.items()}
    if mesh is None:
      batch = {k: jnp.asarray(v) for k, v in batch.items()}
    else:
      batch = parallel.shard_batch(batch, mesh)
      extra = None if extra is None else parallel.shard_batch(extra, mesh)
    if extra is not None:
      clean_img = {t: {m: extra[f"{t}/{m}"] for m in ms} for t, ms in clean_img.items()}
    if index is not None:
      index = jnp.asarray(index, jnp.int32)
      index = index if mesh is None else parallel.replicate(index, mesh)
    if program is None or loop != "python":
      return parallel.to_host(_compiled(state, batch, eps_, bounds, chunk_key, clean_img,
                                        reference, index, predict=predict, tasks=tasks,
                                        program=program, loop=None if program is None else loop))
    # The Python loop: the attack's programs, then the clean pass's program on its images.
    x_adv, best_step = _attack(state, batch, eps_, bounds, chunk_key, index, predict=predict,
                               tasks=tasks, program=program, loop=loop)
    attacked = {**batch, "image": parallel.placed_like(x_adv, batch["image"])}
    states, metrics, _ = _compiled(state, attacked, eps_, bounds, None, None, None, None,
                                   predict=predict, tasks=tasks, program=None, loop=None)
    return parallel.to_host((states, metrics,
                             (*_scores(tasks, metrics, clean_img, reference), best_step)))

  def gather(outputs, num):
    """Per-image outputs of the chunks into (num, ...) arrays in image order."""
    parts = [jax.tree.map(lambda v, k=k: v[:k], out) for out, k in outputs]
    return jax.tree.map(lambda *v: np.concatenate(v)[:num], *parts)

  everything = np.arange(n)
  num_c = len(cands) + 1
  seconds = np.zeros(num_c)
  started = time.perf_counter()
  clean_states, clean_img, _ = gather(
      [(run(None, idx, k), k) for idx, k in _chunks(everything, size)], n)
  clean = tasks_lib.metrics.compute(tasks, worst_case.dataset_state(tasks, clean_states, groups))
  for t in tasks:
    for m in t.metrics:
      if clean[t.name][m] == 0:
        raise ValueError(f"clean {t.name!r}/{m!r} is 0, so the ARP is undefined; evaluate a "
                         "trained model on data where the metric is non-zero.")
  reference = {t: {m: jnp.float32(v) for m, v in ms.items()} for t, ms in clean.items()}
  if mesh is not None:
    reference = parallel.replicate(reference, mesh)

  names = ["clean"] + [c.name for c in cands]
  states = {t: {k: np.zeros((num_c,) + v.shape, v.dtype) for k, v in s.items()}
            for t, s in clean_states.items()}
  for t, s in clean_states.items():
    for k, v in s.items():
      states[t][k][0] = v
  metrics_all = [clean_img]
  scores = np.zeros((num_c, n), np.float32)
  drops = {t.name: np.zeros((num_c, n), np.float32) for t in tasks}
  available = np.zeros((num_c, n), bool)
  best_step = np.zeros((num_c, n), np.int32)  # iteration of each returned point (clean: 0)
  available[0] = True
  seconds[0] = time.perf_counter() - started
  for ci, cand in enumerate(cands, 1):
    started = time.perf_counter()
    todo = everything if threshold is None else everything[scores[:ci].max(0) < threshold]
    outputs = []
    for j, (idx, k) in enumerate(_chunks(todo, size)):
      chunk_key = jax.random.fold_in(jax.random.fold_in(key, cand.restart), j)
      outputs.append((run(cand.program, idx, k, clean_img, reference, chunk_key, cand.index), k))
    metrics_c = {t.name: {m: np.zeros(n, np.float32) for m in t.metrics} for t in tasks}
    if len(todo):
      st, ms, (s, d, steps) = gather(outputs, len(todo))
      for t, leaves in st.items():
        for lk, v in leaves.items():
          states[t][lk][ci, todo] = v
      for t, m_ in ms.items():
        for m, v in m_.items():
          metrics_c[t][m][todo] = v
      scores[ci, todo] = s
      best_step[ci, todo] = steps
      for t, v in d.items():
        drops[t][ci, todo] = v
      available[ci, todo] = True
    metrics_all.append(metrics_c)
    seconds[ci] = time.perf_counter() - started
    if not np.all(np.isfinite(scores[ci, todo])):
      raise ValueError(f"candidate {cand.name} produced non-finite scores; the model gives NaN/inf "
                       "under attack.")

  return Candidates(tasks=tasks, names=names, candidates=tuple(cands), clean=clean, states=states,
                    groups=groups, scores=scores, drops=drops, available=available,
                    best_step=best_step, metrics=metrics_all, chunk=size, seconds=seconds,
                    suite=suite if isinstance(suite, str) else "custom")
