"""The monitor suite: every monitor of a run, held in a list and driven through one lifecycle.

The optimizer never talks to a monitor by name: it calls the suite, the suite calls
each monitor in order (see :class:`chuck.monitors.base.Monitor` for the lifecycle).
``stats()`` merges every monitor's statistics into the one mapping
:class:`chuck.core.observation.ObservationSpec` encodes, so a user's monitor reaches the
observation source, the health report and checkpoints like the built-in ones.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

from chuck.monitors.base import Indicator, Monitor, MonitorContext, StepRecord
from chuck.monitors.control import ControlMonitor
from chuck.monitors.lr_advice import resolve_lr_conflicts


class MonitorSuite:
    """An ordered list of monitors with unique names.

    Args:
        monitors: the monitors, in the order their hooks run.
        ctx: what they may read about the run.
    """

    def __init__(self, monitors: list[Monitor], ctx: MonitorContext) -> None:
        self.monitors: list[Monitor] = []
        self._stepping: list[Monitor] = []  # the monitors whose on_step does something (it runs every step)
        self.ctx = ctx
        for m in monitors:
            self.add(m)

    def add(self, monitor: Monitor) -> Monitor:
        if not isinstance(monitor, Monitor):
            raise TypeError(f"a monitor must subclass chuck.monitors.Monitor, got {type(monitor).__name__}")
        if any(m.name == monitor.name for m in self.monitors):
            raise ValueError(f"a monitor named {monitor.name!r} is already attached")
        monitor.attach(self.ctx)
        self.monitors.append(monitor)
        self._stepping = [m for m in self.monitors if _overrides(m, "on_step")]
        return monitor

    def __iter__(self) -> Iterator[Monitor]:
        return iter(self.monitors)

    def __getitem__(self, name: str) -> Monitor:
        for m in self.monitors:
            if m.name == name:
                return m
        raise KeyError(f"no monitor named {name!r}; have {[m.name for m in self.monitors]}")

    def get(self, name: str) -> Monitor | None:
        return next((m for m in self.monitors if m.name == name), None)

    # -- lifecycle ----------------------------------------------------------
    def on_step(self, record: StepRecord) -> None:
        for m in self._stepping:
            m.on_step(record)

    def before_update(self) -> None:
        for m in self.monitors:
            m.before_update()

    def after_update(self) -> None:
        for m in self.monitors:
            m.after_update()

    def arm(self) -> None:
        for m in self.monitors:
            m.arm()

    def on_decision(self) -> None:
        for m in self.monitors:
            m.on_decision()

    def on_validation(self, step: int, value: float) -> None:
        for m in self.monitors:
            m.on_validation(step, value)

    def on_guardrail(self, verdict: str) -> None:
        for m in self.monitors:
            m.on_guardrail(verdict)

    # -- read-outs ----------------------------------------------------------
    def stats(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for m in self.monitors:
            out.update(m.stats())
        return out

    def indicators(self) -> list[Indicator]:
        """Every monitor's indicators, judged against the run's phase (the controller's monitor tells it,
        through ``ctx.phase``), with at most one learning-rate direction among them
        (:func:`chuck.monitors.lr_advice.resolve_lr_conflicts`)."""
        control = next((m for m in self.monitors if isinstance(m, ControlMonitor)), None)
        self.ctx.phase = control.phase() if control is not None else None
        out: list[Indicator] = []
        for m in self.monitors:
            try:
                out.extend(m.indicators())
            except Exception as exc:  # noqa: BLE001 - a user's monitor must not break the report
                warnings.warn(f"chuck: monitor {m.name!r} failed to report indicators: {exc}", RuntimeWarning, stacklevel=2)
        return resolve_lr_conflicts(out)

    # -- checkpoints ----------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {m.name: m.state_dict() for m in self.monitors}

    def validate_state_dict(self, state: dict[str, Any]) -> list[str]:
        """Problems that forbid loading ``state`` (empty when it loads), each naming its monitor."""
        problems = []
        for m in self.monitors:
            if state.get(m.name) is None:
                continue  # a monitor added since the checkpoint starts fresh
            if not isinstance(state[m.name], dict):
                problems.append(f"monitors.{m.name} must be a dict, got {type(state[m.name]).__name__}")
                continue
            try:
                why = m.validate_state_dict(state[m.name])
            except Exception as exc:  # noqa: BLE001 - a user's check that raises refuses the state, it does not crash the load
                why = f"its validate_state_dict raised {type(exc).__name__}: {exc}"
            if why:
                problems.append(f"monitors.{m.name}: {why}")
        return problems

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for m in self.monitors:
            if m.name in state and state[m.name] is not None:
                m.load_state_dict(state[m.name])


def _overrides(monitor: Monitor, hook: str) -> bool:
    """Whether ``monitor`` has its own ``hook`` (a class override or an attribute set on it), i.e.
    calling it may do something; the base class's hooks do nothing."""
    return hook in vars(monitor) or getattr(type(monitor), hook) is not getattr(Monitor, hook)
