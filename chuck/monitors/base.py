"""The monitor contract and the indicator record every monitor reports.

A monitor turns a training run into two things:

* ``stats()``: a flat ``{name: float}`` mapping of raw, scale-free statistics.
  :class:`chuck.observation.ObservationSpec` reads these (and only these) to
  build the policy's observation, so the policy and the report see the same
  numbers.
* ``indicators()``: human-facing :class:`Indicator` records (value, status,
  reason, recommendation, source of the threshold) for ``ChuckOptimizer.health()``.

Monitors are cheap by contract on the per-step path (``on_step``) and may do
costly work only in ``on_decision``, which the optimizer calls every
``interval`` steps.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any, Literal

Status = Literal["ok", "warn", "bad", "n/a"]


@dataclass(frozen=True)
class Indicator:
    """One named health indicator, as shown by ``ChuckOptimizer.health()``.

    Attributes:
        name: dotted name, ``"<monitor>.<indicator>"``, e.g. ``"loss.plateau"``.
        value: the measured value (``nan`` when not yet measurable).
        status: ``"ok"``, ``"warn"``, ``"bad"`` or ``"n/a"`` (not enough data).
        reason: one sentence saying why the status is what it is.
        recommendation: what a person (or the heuristic policy) should do; empty when ok.
        source: where the threshold comes from (paper, issue or rule of thumb).
    """

    name: str
    value: float
    status: Status
    reason: str
    recommendation: str = ""
    source: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def grade(
    value: float,
    warn: float,
    bad: float,
    *,
    higher_is_worse: bool = True,
) -> Status:
    """Map ``value`` to a status given warn/bad thresholds.

    ``nan`` maps to ``"n/a"``: a monitor with too little data says so instead of guessing.
    """
    if value is None or math.isnan(value):
        return "n/a"
    if not higher_is_worse:
        value, warn, bad = -value, -warn, -bad
    if value >= bad:
        return "bad"
    if value >= warn:
        return "warn"
    return "ok"


class Monitor(ABC):
    """Base class of every monitor.

    Contract (checked by ``tests/monitors/test_monitor_contract.py`` for every monitor):

    * ``name`` is a short identifier, unique among the optimizer's monitors.
    * ``stats()`` returns the same keys every call, each a finite float or ``nan``,
      prefixed with ``name + "."``.
    * ``indicators()`` returns :class:`Indicator` records whose names are prefixed the same way.
    * ``state_dict()`` returns only Python scalars, lists, dicts and tensors, so that a
      checkpoint loads with ``torch.load(weights_only=True)``; ``load_state_dict`` restores it exactly.
    """

    name: str = "monitor"

    @abstractmethod
    def stats(self) -> dict[str, float]:
        """Raw statistics for the observation; keys are stable across calls."""

    @abstractmethod
    def indicators(self) -> list[Indicator]:
        """Human-facing indicators for the health report."""

    def on_decision(self) -> None:  # noqa: B027 - optional hook
        """Costly work, called every ``interval`` steps before ``stats()`` is read."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Checkpointable state (weights_only-safe types only)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""


def safe_log(x: float, floor: float = 1e-30) -> float:
    """``log(x)`` for positive finite ``x``; ``nan`` otherwise (never raises)."""
    if x is None or not math.isfinite(x) or x <= 0:
        return math.log(floor) if x == 0 else float("nan")
    return math.log(max(x, floor))


def median(values) -> float:
    """Median of a small iterable of floats (``nan`` if empty).

    ``np.median`` spends ~60 us in overhead on a 100-element deque; sorting in Python takes ~5.
    """
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return float("nan")
    mid = n // 2
    return float(ordered[mid]) if n % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])
