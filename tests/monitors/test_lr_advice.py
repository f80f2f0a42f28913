"""A health report advises at most one learning-rate direction: indicators that disagree are settled by
the strength of their evidence, or, when the strongest evidence itself disagrees, no change is advised."""

from __future__ import annotations

from typing import Any

import torch

import chuck
from chuck.core.report import HealthReport
from chuck.monitors import Indicator, Monitor
from chuck.monitors.lr_advice import resolve_lr_conflicts
from tests.conftest import make_net, run_steps

RAISE = "raise the learning rate"
LOWER = "lower the learning rate"


def _ind(name: str, status: str, way: str) -> Indicator:
    rec = f"updates look wrong: {RAISE if way == 'raise' else LOWER}"
    return Indicator(name, 0.0, status, f"{name} measured something", rec, "test", way)  # type: ignore[arg-type]


def _directions(indicators: list[Indicator]) -> set[str]:
    """Every lr direction the indicators ask for, by their advice and by their words."""
    ways = {i.lr_advice for i in indicators if i.lr_advice and i.status in ("warn", "bad")}
    words = " ".join(i.recommendation for i in indicators)
    return ways | ({"raise"} if RAISE in words else set()) | ({"lower"} if LOWER in words else set())


def test_the_stronger_evidence_keeps_its_lr_advice_and_the_other_is_demoted() -> None:
    """Steps small next to the distance estimate (a scale rule) against gradients turning against the
    last step (the loss's measured response): the hypergradient's "lower" stands."""
    inds = [
        _ind("step.size_vs_distance", "bad", "raise"),
        _ind("weights.update_ratio", "warn", "raise"),
        _ind("step.hypergradient", "warn", "lower"),
        Indicator("loss.plateau", 0.1, "ok", "fine", "", "test"),
    ]
    out = resolve_lr_conflicts(inds)
    assert _directions(out) == {"lower"}
    by = {i.name: i for i in out}
    assert by["step.hypergradient"] == inds[2]
    for name in ("step.size_vs_distance", "weights.update_ratio"):
        assert by[name].status == "warn" and by[name].lr_advice == ""
        assert "conflicting signals" in by[name].reason and "step.hypergradient" in by[name].recommendation
    assert by["loss.plateau"] == inds[3]


def test_evidence_of_equal_strength_that_disagrees_advises_no_change() -> None:
    inds = [_ind("user.too_slow", "warn", "raise"), _ind("grad.noise", "warn", "lower")]
    out = resolve_lr_conflicts(inds)
    assert _directions(out) == set()
    for ind in out:
        assert ind.status == "warn" and ind.recommendation == "no lr change advised: signals disagree"
        assert "signals disagree" in ind.reason


def test_agreeing_indicators_are_left_alone() -> None:
    inds = [_ind("step.hypergradient", "warn", "lower"), _ind("grad.exploding", "bad", "lower")]
    assert resolve_lr_conflicts(inds) == inds


class _Contrary(Monitor):
    """A user's monitor that reads tiny steps next to an overshooting hypergradient: contradictory on purpose."""

    name = "user"

    def stats(self) -> dict[str, float]:
        return {"user.x": 0.0}

    def indicators(self) -> list[Indicator]:
        return [_ind("user.tiny_steps", "bad", "raise"), _ind("user.overshoot", "warn", "lower")]

    def state_dict(self) -> dict[str, Any]:
        return {}


def test_a_report_holding_contradictory_indicators_names_one_direction_at_most() -> None:
    model = make_net()
    opt = chuck.ChuckOptimizer(
        torch.optim.AdamW(model.parameters(), lr=1e-3), "constant", model=model, monitors=[_Contrary()], history=False
    )
    run_steps(model, opt, 0, 45)
    report = opt.health()
    assert isinstance(report, HealthReport)
    assert len(_directions(report.indicators)) <= 1
    assert report.lr_advice in ("", "raise", "lower")
    text = str(report)
    assert not (RAISE in text and LOWER in text), text
    by = {i.name: i for i in report.indicators}
    # same rank, the bad one is the stronger evidence
    assert by["user.tiny_steps"].lr_advice == "raise" and by["user.overshoot"].lr_advice == ""
    assert "conflicting signals" in by["user.overshoot"].reason
