"""The defence leaderboard (``python -m mtajax.run defend``): its table and Pareto figure.

One :class:`Row` per (layout, recipe, seed): the clean-performance loss (ARP of its clean metrics
against the undefended model of the same layout and seed), the robust ARP of each suite at each ε,
the gradient-masking checks (:mod:`mtajax.masking`), training seconds and passes per example.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Sequence

from matplotlib import figure as mpl_figure

from mtajax import results
from mtajax.report import figures
from mtajax.report import records as rec_lib
from mtajax.report import tables

CHECKS = ("eps_sweep", "transfer", "more_steps", "gradients")


@dataclasses.dataclass(frozen=True)
class Row:
  """One defended (or the undefended) model of the leaderboard."""
  layout: str  # the config's layout entry
  sharing_level: int
  recipe: str
  seed: int
  clean_loss: float | None  # ARP (%) of its clean metrics against the undefended twin's
  robust: dict[tuple[str, float], float]  # (suite, ε) -> robust ARP (%)
  converged: dict[tuple[str, float], bool]
  checks: dict[str, bool | None]  # masking check -> passed (None: not run, e.g. transfer of 'none')
  reasons: list[str]  # the failed checks' one-line reasons
  train_s: float | None
  passes_per_example: float | None
  # Seconds of its stored robust evaluations and of its masking checks (None: unknown, records
  # written before they were timed).
  robust_s: float | None = None
  checks_s: float | None = None

  @property
  def failed(self) -> bool:
    return any(v is False for v in self.checks.values())


def _check_cell(passed: bool | None) -> str:
  return "–" if passed is None else ("pass" if passed else "**FAIL**")


def table(rows: Sequence[Row], suites: Sequence[str], eps: Sequence[float]) -> str:
  """The leaderboard as Markdown, one row per (layout, recipe, seed)."""
  cols = [(s, e) for e in eps for s in suites]
  header = (["Layout", "Recipe", "Seed", "Clean loss"] +
            [f"Robust ARP {s} ε={e:g}" for s, e in cols] +
            [f"Check {c}" for c in CHECKS] + ["Defence", "Train s", "Passes/example"])
  out = []
  for r in rows:
    robust = [rec_lib.fmt(r.robust.get(c)) + ("" if r.converged.get(c, True) else "*")
              for c in cols]
    verdict = "undefended" if r.recipe == "none" else ("**FAILS a check**" if r.failed else "ok")
    out.append([f"{r.layout} ({r.sharing_level}L)", r.recipe, str(r.seed),
                rec_lib.fmt(r.clean_loss)] + robust + [_check_cell(r.checks.get(c))
                                                        for c in CHECKS] +
               [verdict, rec_lib.fmt(r.train_s),
                "–" if r.passes_per_example is None else f"{r.passes_per_example:g}"])
  return tables.markdown(header, out)


def pareto(points: Sequence[tuple[float, float]]) -> list[bool]:
  """Whether each (clean loss, robust ARP) point is on the Pareto front (both lower is better)."""
  return [not any(q[0] <= p[0] and q[1] <= p[1] and q != p for q in points) for p in points]


def figure_pareto(rows: Sequence[Row], suite: str, eps: float) -> mpl_figure.Figure:
  """Clean-performance loss against robust ARP (``suite`` at ``eps``); the front joined, models
  that fail a masking check drawn as crosses."""
  fig = figures.new_figure(6.0, 4.5)
  ax = fig.add_subplot()
  shown = [r for r in rows if r.clean_loss is not None and (suite, eps) in r.robust]
  points = [(r.clean_loss, r.robust[(suite, eps)]) for r in shown]
  front = sorted(p for p, on in zip(points, pareto(points)) if on)
  if front:
    ax.plot(*zip(*front), "-", color="0.6", zorder=0, label="Pareto front")
  colours = {name: f"C{i}" for i, name in enumerate(dict.fromkeys(r.recipe for r in shown))}
  labelled = set()  # one legend entry per recipe, however many layouts and seeds it has
  for r, (x, y) in zip(shown, points):
    ax.scatter(x, y, color=colours[r.recipe], marker="x" if r.failed else "o",
               label=None if r.recipe in labelled else r.recipe)
    labelled.add(r.recipe)
    ax.annotate(f"{r.layout} s{r.seed}", (x, y), fontsize=7, xytext=(3, 3),
                textcoords="offset points")
  ax.set_xlabel("clean-performance loss (ARP vs undefended, %)")
  ax.set_ylabel(f"robust ARP, {suite} ε={eps:g} (%)")
  ax.set_title("Defences: lower-left is better (x: fails a masking check)")
  ax.legend(fontsize=8)
  return fig


def stored_seconds(rows: Sequence[Row]) -> str:
  """The table's whole cost from its stored records, whichever runs made them (a re-run that
  reuses everything takes seconds; the table did not)."""
  def total(values):
    known = [v for v in values if v is not None]
    missing = len(values) - len(known)
    if not known:
      return "unknown (records written before it was timed)"
    return f"{sum(known):.0f} s" + (f" ({missing} of {len(values)} rows unknown)" if missing
                                     else "")
  return (f"The table's stored work: training {total([r.train_s for r in rows])}, robust "
          f"evaluations {total([r.robust_s for r in rows])}, masking checks "
          f"{total([r.checks_s for r in rows])}.")


def write(rows: Sequence[Row], out_dir: str | pathlib.Path, *, suites: Sequence[str],
          eps: Sequence[float], seconds: float | None = None) -> pathlib.Path:
  """Writes ``out_dir/defend.md`` and ``out_dir/defend_pareto.png``; returns the Markdown's path."""
  out_dir = pathlib.Path(out_dir)
  suite, at = suites[-1], max(eps)
  figures.save_png(figure_pareto(rows, suite, at), out_dir / "defend_pareto.png")
  failed = [f"- {r.layout} {r.recipe} seed {r.seed}: {reason}" for r in rows if r.recipe != "none"
            for reason in r.reasons]
  lines = ["# mtajax defence leaderboard", "",
           "Clean loss: ARP (%) of the model's clean metrics against the undefended model of the "
           "same layout and seed (lower is better). Robust ARP (%): worst case per image over the "
           "suite (lower is more robust; * not converged). Checks: the gradient-masking checks of "
           "mtajax.masking; a defence that fails any is marked. Passes/example: forward + backward "
           "passes per training example and step (FAT: its maximum).", "",
           table(rows, suites, eps), "",
           *(["Failed checks:", "", *failed, ""] if failed else []),
           "![Pareto front](defend_pareto.png)", "",
           f"Figure: clean loss against robust ARP ({suite}, ε={at:g})."]
  if seconds is not None:
    lines += ["", f"This run took {seconds:.0f} s."]
  lines += ["", stored_seconds(rows)]
  path = out_dir / "defend.md"
  results.write_atomic(path, ("\n".join(lines) + "\n").encode())
  return path
