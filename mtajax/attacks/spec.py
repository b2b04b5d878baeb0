"""One attack, fully specified: :class:`Attack` (attack, direction, steps, options, attack loss).

The grid, the robust suite, the sweep's examples and adversarial training all run attacks through
it; ε, the bounds and the PRNG key are call arguments (traced, so an ε sweep or a restart reuses
the compiled attack).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax

from mtajax import directions as directions_lib
from mtajax.attacks import common
from mtajax.attacks import loop as loop_lib
from mtajax.attacks.apgd import apgd
from mtajax.attacks.auto_sage import auto_sage
from mtajax.attacks.early_stopped import early_stopped_pgd
from mtajax.attacks.fgsm import fgsm
from mtajax.attacks.pgd import pgd
from mtajax.tasks import attack_losses
from mtajax.tasks import loss_fn as loss_fn_lib

ATTACKS: dict[str, Callable[..., common.AttackResult]] = {
    "fgsm": fgsm, "pgd": pgd, "apgd": apgd, "auto_sage": auto_sage,
    "early_stopped_pgd": early_stopped_pgd}
# What each attack reads of the call's batch-level arguments besides the images.
_READS = {"apgd": ("baselines", "example_weight")}


def by_name(name: str) -> Callable[..., common.AttackResult]:
  """The attack function called ``name`` (fgsm, pgd, apgd, auto_sage, early_stopped_pgd)."""
  if name not in ATTACKS:
    raise ValueError(f"unknown attack {name!r}; use one of {', '.join(ATTACKS)}.")
  return ATTACKS[name]


def _one_pass(d: directions_lib.Direction) -> bool:
  """Whether ``d`` costs one forward and one backward pass (else one forward and T backward)."""
  plain = (directions_lib.Single, directions_lib.Total, directions_lib.RandomTask)
  return isinstance(d, plain) or (
      isinstance(d, directions_lib.GBMTA) and d.method == "log")


@dataclasses.dataclass(frozen=True)
class Attack:
  """An attack on any ``loss_fn(x, labels) -> {task: (B,) losses}``.

  Attributes:
    attack: a name in :data:`ATTACKS`.
    direction: a :mod:`mtajax.directions` direction (or a ``Switched`` one, whose choice the call's
      ``index`` picks).
    num_steps: iterations (FGSM: 1).
    options: the attack function's other static options, as sorted ``(name, value)`` pairs (a
      mapping is accepted).
    attack_loss: the per-pixel loss the attack ascends (:mod:`mtajax.tasks.attack_losses`); used
      by :meth:`loss_fn`: a name, or ``{task: name}`` (stored as sorted pairs).
  """
  attack: str
  direction: Any
  num_steps: int = 10
  options: tuple[tuple[str, Any], ...] = ()
  attack_loss: Any = "default"

  def __post_init__(self):
    by_name(self.attack)
    options = dict(self.options)
    for bad in ("num_steps", "direction", "eps", "bounds", "key"):
      if bad in options:
        raise ValueError(f"Attack options may not hold {bad!r}; pass it as "
                         f"{'Attack(num_steps=...)' if bad == 'num_steps' else 'a call argument'}.")
    object.__setattr__(self, "options", tuple(sorted(options.items())))
    if isinstance(self.attack_loss, Mapping):
      object.__setattr__(self, "attack_loss", tuple(sorted(self.attack_loss.items())))
    if self.attack == "fgsm":
      object.__setattr__(self, "num_steps", 1)
    common.check_steps(self.num_steps)

  @property
  def name(self) -> str:
    """``attack:direction`` (and ``:attack loss`` unless the default)."""
    loss = "" if self.attack_loss == "default" else f":{attack_losses.label(self.attack_loss)}"
    return f"{self.attack}:{self.direction.name}{loss}"

  def loss_fn(self, predict: Callable[[jax.Array], Any], tasks: Sequence[Any]):
    """The loss function of ``predict`` this attack ascends (its direction's reduction and its
    attack loss)."""
    loss = self.attack_loss if isinstance(self.attack_loss, str) else dict(self.attack_loss)
    return loss_fn_lib.make_loss_fn(predict, tasks, self.direction.reduction, loss)

  def __call__(self, loss_fn, x: jax.Array, labels: Any, *, eps: Any, bounds: common.Bounds,
               key: jax.Array | None = None, baselines: Mapping[str, Any] | None = None,
               example_weight: jax.Array | None = None, index: Any = None,
               loop: loop_lib.Loop | None = None) -> common.AttackResult:
    """Attacks ``x``. ``key`` is used by random starts; ``baselines`` and ``example_weight`` by the
    attacks that read them (APGD); ``index`` picks a ``Switched`` direction's choice (traced);
    ``loop`` as in :mod:`mtajax.attacks.loop` (an ``unroll`` option wins)."""
    kwargs = dict(self.options)
    if self.attack != "fgsm":
      kwargs["num_steps"] = self.num_steps
    if kwargs.get("random_start"):
      kwargs["key"] = key
    given = {"baselines": baselines, "example_weight": example_weight}
    for name in _READS.get(self.attack, ()):
      kwargs[name] = given[name]
    if loop is not None and "unroll" not in kwargs:
      kwargs["loop"] = loop
    direction = self.direction if index is None else self.direction.at(index)
    return by_name(self.attack)(loss_fn, x, labels, direction=direction, eps=eps, bounds=bounds,
                                **kwargs)

  def passes(self, num_tasks: int, direction: Any = None) -> int:
    """Forward + backward passes per image (the attack's own, not the scoring forward).

    A direction (default: the attack's; give a ``Switched`` direction's choice) costs one forward
    and one backward pass (Single, Total, GB-MTA's log form) or one forward and T backward passes
    (the directions built on per-task gradients).
    """
    step = 2 if _one_pass(self.direction if direction is None else direction) else 1 + num_tasks
    n, options = self.num_steps, dict(self.options)
    return {"fgsm": step, "apgd": n * step + 1,
            "pgd": n * step + int(bool(options.get("return_best"))),
            "auto_sage": n * (1 + num_tasks + step), "early_stopped_pgd": n * step}[self.attack]

