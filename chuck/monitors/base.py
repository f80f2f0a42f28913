"""The monitor contract and the indicator record every monitor reports.

A monitor turns a training run into two things:

* ``stats()``: a flat ``{name: float}`` mapping of raw, scale-free statistics.
  :class:`chuck.core.observation.ObservationSpec` reads these (and only these) to
  build the policy's observation, so the policy and the report see the same
  numbers.
* ``indicators()``: human-facing :class:`Indicator` records (value, status,
  reason, recommendation, source of the threshold) for ``ChuckOptimizer.health()``.

Monitors are cheap by contract on the per-step path (``on_step``) and may do
costly work only in ``on_decision``, which the controller calls once per
decision. :class:`chuck.monitors.suite.MonitorSuite` holds them in a list and
drives the lifecycle; users add their own with ``ChuckOptimizer(monitors=[...])``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

Status = Literal["ok", "warn", "bad", "n/a"]
#: Which way an indicator's recommendation moves the learning rate ("" when it does not).
LrAdvice = Literal["raise", "lower", ""]


@dataclass(frozen=True)
class Indicator:
    """One named health indicator, as shown by ``ChuckOptimizer.health()``.

    Statuses mean the same for every indicator:

    * ``"ok"``: nothing to do (no recommendation);
    * ``"warn"``: look at it (the recommendation says what to check or try);
    * ``"bad"``: act now (the recommendation says what to do);
    * ``"n/a"``: not measurable yet (the reason says what is missing; no recommendation).

    Attributes:
        name: dotted name, ``"<monitor>.<indicator>"``, e.g. ``"loss.plateau"``.
        value: the measured value (``nan`` when not yet measurable).
        status: ``"ok"``, ``"warn"``, ``"bad"`` or ``"n/a"`` (not enough data).
        reason: one sentence saying why the status is what it is.
        recommendation: what a person (or the heuristic policy) should do; empty unless warn or bad.
        source: where the threshold comes from (a paper, a measurement script, a rule of thumb).
        lr_advice: ``"raise"`` or ``"lower"`` when the recommendation moves the learning rate, so that
            the report can settle indicators that disagree (``chuck.monitors.lr_advice``); ``""`` otherwise.
    """

    name: str
    value: float
    status: Status
    reason: str
    recommendation: str = ""
    source: str = ""
    lr_advice: LrAdvice = ""

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


def advise(status: Status, recommendation: str) -> str:
    """The recommendation when ``status`` asks for action (warn or bad); empty otherwise."""
    return recommendation if status in ("warn", "bad") else ""


def lr_way(status: Status, way: LrAdvice) -> LrAdvice:
    """``way`` when ``status`` asks for action (warn or bad); ``""`` otherwise."""
    return way if status in ("warn", "bad") else ""


def sci(log10_value: float) -> str:
    """``10**log10_value`` in plain notation, two significant digits: ``2.5e-5``, ``0.003``."""
    text = f"{10.0**log10_value:.2g}"
    mantissa, e, exponent = text.partition("e")
    return f"{mantissa}e{int(exponent)}" if e else text


def lowered_lr_note(phase: RunPhase, at_peak_log10: float) -> str:
    """Why a step-size measurement is small in a cooldown: ``"small because the lr is at 0.02x its peak
    in the cooldown (6.3e-4 at the peak lr)"``."""
    if math.isinf(at_peak_log10):
        return f"small because the lr is at 0 {phase.where}"
    return f"small because the lr is at {phase.lr_fraction:.2g}x its peak {phase.where} ({sci(at_peak_log10)} at the peak lr)"


def phase_of(monitor: Monitor) -> RunPhase | None:
    """The run's phase as the suite last set it on ``monitor``'s context (``None``: unknown, or a monitor
    used on its own)."""
    return getattr(getattr(monitor, "ctx", None), "phase", None)


#: Phases of a run, in the order a run with a known budget goes through them.
PHASES = ("early", "middle", "cooldown", "end")


@dataclass(frozen=True)
class RunPhase:
    """Where a run stands, for judging its indicators: what is healthy changes as a run goes on.

    Set by the controller's monitor (``ChuckOptimizer`` holds one) on :class:`MonitorContext` before the
    indicators are read; ``None`` there when no controller watches the run.

    Attributes:
        name: ``"early"`` (the first tenth of a known budget, else the first decisions), ``"middle"``,
            ``"cooldown"`` (the lr is being lowered on purpose: the anneal at the end of a known budget,
            a scheduler, or a policy's cooldown in the second half of a known budget) or ``"end"`` (the
            budget's last step is reached).
        step: optimizer steps taken.
        total_steps: the planned steps (``None``: not given).
        lr_drop_log10: ``log10`` of the effective lr now over its peak so far in the run (``<= 0``).
    """

    name: str
    step: int
    total_steps: int | None = None
    lr_drop_log10: float = 0.0

    @property
    def winding_down(self) -> bool:
        """Whether the lr is being lowered on purpose (cooldown or end): smaller steps and a flatter
        loss are what the schedule asks for, not signs of a problem."""
        return self.name in ("cooldown", "end")

    @property
    def where(self) -> str:
        """The phase as a place in the run: ``"in the cooldown"``, ``"at the end of the run"``."""
        return {"end": "at the end of the run", "cooldown": "in the cooldown"}.get(self.name, f"in the {self.name} phase")

    @property
    def lr_fraction(self) -> float:
        """The effective lr as a fraction of its peak."""
        return 10.0**self.lr_drop_log10

    def describe(self) -> str:
        """``"cooldown (step 340 of 400), the lr at 0.04x its peak"``."""
        where = f"step {self.step}" + (f" of {self.total_steps}" if self.total_steps else "")
        text = f"{self.name} ({where})"
        if self.lr_drop_log10 < -0.05:
            text += f", the lr at {self.lr_fraction:.2g}x its peak"
        return text


@dataclass(frozen=True)
class StepRecord:
    """What every monitor's per-step hook receives after a base-optimizer step.

    Attributes:
        step: base-optimizer steps taken, this one included (skipped steps do not count).
        loss: the training loss as a float, or ``None`` when the user gave none.
        grad_norm: the global gradient norm before clipping (``0.0`` when nothing has a gradient).
        clipped: whether chuck clipped this step's gradients.
    """

    step: int
    loss: float | None
    grad_norm: float
    clipped: bool


class MonitorContext:
    """What a monitor may read about the run: set by :class:`MonitorSuite` before any hook.

    ``params`` is recomputed on every access from the optimizer's groups, so a layer that
    is unfrozen mid-run, or a group added with ``add_param_group``, is watched from then on.
    """

    def __init__(self, optimizer: Any, model: Any = None, generator: Any = None, names: dict[int, str] | None = None) -> None:
        self.optimizer = optimizer
        self.model = model
        self.generator = generator
        self.names = names or {}
        #: the run's phase when the indicators are read (:class:`RunPhase`); ``None``: unknown
        self.phase: RunPhase | None = None

    @property
    def params(self) -> list[Any]:
        """Every parameter of every group that currently requires a gradient."""
        return [p for g in self.optimizer.param_groups for p in g["params"] if p.requires_grad]

    def name(self, p: Any, i: int) -> str:
        return self.names.get(id(p), f"param{i}")


class Monitor(ABC):
    """Base class of every monitor: one lifecycle, driven by :class:`MonitorSuite`.

    Lifecycle, in the order the optimizer calls it:

    * ``attach(ctx)``: once, before anything else (the suite stores ``ctx`` in ``self.ctx``).
    * ``on_step(record)``: after every successful base step. Cheap by contract: a few float
      operations, no tensor work (the per-step overhead budget is ~2%, see docs/results.md).
    * ``before_update()`` / ``after_update()``: around the base update of the two steps
      before a decision (sampled steps: the weight monitor measures updates there).
    * ``arm()``: after the step that precedes a decision's last step, so that the coming
      forward pass can be sampled (activation hooks).
    * ``on_decision()``: costly work, once per decision, before ``stats()`` is read.
    * ``on_validation(step, value)``: when the user reports a validation loss.
    * ``on_guardrail(verdict)``: when a guardrail skipped, rolled back or accepted a step.

    Contract (checked by :func:`chuck.testing.check_monitor`, which the test suite runs on every monitor,
    the built-in ones and a user-defined one):

    * ``name`` is a short identifier, unique among the optimizer's monitors.
    * ``stats()`` returns the same keys every call, each a finite float or ``nan``,
      prefixed with ``name + "."``.
    * ``indicators()`` returns :class:`Indicator` records whose names are prefixed the same way.
    * ``state_dict()`` returns only Python scalars, lists, dicts and tensors, so that a
      checkpoint loads with ``torch.load(weights_only=True)``; ``load_state_dict`` restores it exactly.
    """

    name: str = "monitor"
    ctx: MonitorContext

    def attach(self, ctx: MonitorContext) -> None:
        self.ctx = ctx

    def on_step(self, record: StepRecord) -> None:  # noqa: B027 - optional hook
        """Cheap per-step bookkeeping."""

    def before_update(self) -> None:  # noqa: B027 - optional hook
        """Before the base update of a sampled step."""

    def after_update(self) -> None:  # noqa: B027 - optional hook
        """After the base update of a sampled step."""

    def arm(self) -> None:  # noqa: B027 - optional hook
        """The next forward pass precedes a decision: hook it if needed."""

    def on_decision(self) -> None:  # noqa: B027 - optional hook
        """Costly work, called every ``interval`` steps before ``stats()`` is read."""

    def on_validation(self, step: int, value: float) -> None:  # noqa: B027 - optional hook
        """A finite validation loss reported through ``observe``."""

    def on_guardrail(self, verdict: str) -> None:  # noqa: B027 - optional hook
        """A guardrail intervention (``"skip_nonfinite"``, ``"rollback_spike"``, ``"skip_spike"``,
        ``"accept_level_shift"``, ``"amp_overflow"``)."""

    @abstractmethod
    def stats(self) -> dict[str, float]:
        """Raw statistics for the observation; keys are stable across calls."""

    @abstractmethod
    def indicators(self) -> list[Indicator]:
        """Human-facing indicators for the health report."""

    def state_dict(self) -> dict[str, Any]:
        """Checkpointable state (weights_only-safe types only). Stateless monitors keep the default."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Restore what ``state_dict`` returned."""

    def validate_state_dict(self, state: dict[str, Any]) -> str | None:
        """Why ``state`` cannot be loaded into this monitor (``None`` when it can).

        Checked for every monitor before anything of a checkpoint is loaded, so that a bad
        checkpoint leaves the run untouched.
        """
        return None


def as_real(t: torch.Tensor) -> torch.Tensor:
    """A complex tensor as the real one it is to an optimizer (a trailing dimension of real and imaginary
    parts, ``torch.view_as_real``); any other tensor as it is. Monitors that flatten or cast tensors go
    through it: a cast to float would drop the imaginary parts (and warn)."""
    return torch.view_as_real(t) if t.is_complex() else t


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
