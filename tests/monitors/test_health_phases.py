"""The health report judged against the run's phase: a healthy run reads healthy from its first
steps through its cooldown to its end, and tiny steps are only a problem when no schedule explains them."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import chuck
from chuck.monitors.base import RunPhase
from chuck.monitors.stepsize import StepSizeMonitor
from chuck.monitors.weights import _update_ratio

STEPS = 400


def _separable(step: int, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    x = torch.randn(n, 10, generator=g)
    return x, (x[:, 0] + 0.5 * x[:, 1] > 0).long()


def _healthy_run(total_steps: int | None, scheduler: bool, seed: int = 0) -> list[tuple[str, list]]:
    """A small MLP on linearly separable data, AdamW at a good lr (3e-3) under the default policy; the
    report read at every decision: (phase, indicators)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
    base = torch.optim.AdamW(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(base, T_max=STEPS) if scheduler else None
    opt = chuck.ChuckOptimizer(base, "default", model=model, total_steps=total_steps, history=False)
    xv, yv = _separable(99_999, 2048)
    reports = []
    for s in range(STEPS):
        x, y = _separable(s)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step(loss=loss)
        opt.zero_grad()
        if sched is not None:
            sched.step()
        if (s + 1) % 50 == 0:
            with torch.no_grad():
                opt.observe(val_loss=F.cross_entropy(model(xv), yv))
        if (s + 1) % opt.interval == 0:
            report = opt.health()
            reports.append((report["ctrl.phase"].reason.split(" ")[0], report.indicators))
    with torch.no_grad():
        assert float(F.cross_entropy(model(xv), yv)) < 0.1, "the run must be a healthy one"
    return reports


@pytest.mark.parametrize(
    ("total_steps", "scheduler", "phases"),
    [
        (STEPS, False, {"early", "middle", "cooldown", "end"}),  # the default policy's own end-of-budget cooldown
        (None, True, {"early", "middle", "cooldown"}),  # no budget: a cosine scheduler lowers the lr
    ],
    ids=["total_steps", "scheduler"],
)
def test_a_healthy_run_is_ok_in_every_phase(total_steps, scheduler, phases) -> None:
    reports = _healthy_run(total_steps, scheduler)
    assert {phase for phase, _ in reports} == phases
    flagged = [(phase, i.name, i.status, i.reason) for phase, inds in reports for i in inds if i.status not in ("ok", "n/a")]
    assert not flagged, "\n".join(map(str, flagged))
    _, last = reports[-1]
    ratio = next(i for i in last if i.name == "weights.update_ratio")
    assert "small because the lr is at" in ratio.reason  # small updates at the end are put down to the lowered lr


def test_tiny_updates_in_a_cooldown_are_expected_and_elsewhere_ask_for_more() -> None:
    cooldown = RunPhase("cooldown", 380, 400, lr_drop_log10=-2.0)
    ind = _update_ratio(-5.5, cooldown)
    assert ind.status == "ok" and ind.recommendation == "" and ind.lr_advice == ""
    assert "0.01x its peak in the cooldown" in ind.reason and "expected" in ind.reason
    for phase in (None, RunPhase("middle", 200, 400)):
        ind = _update_ratio(-5.5, phase)
        assert ind.status == "bad" and ind.lr_advice == "raise" and "raise the learning rate" in ind.recommendation
    # a cooldown explains tiny steps only as far as the lr fell
    ind = _update_ratio(-7.5, cooldown)
    assert ind.status == "bad" and "0.01x its peak" in ind.reason and "expected" not in ind.reason


def test_updates_of_a_tuned_adamw_run_are_not_called_large() -> None:
    """AdamW at its best lr takes updates of 10^-2.3 (median) to 10^-1.8 (90th percentile) of its weights."""
    assert _update_ratio(-1.8, None).status == "ok"
    ind = _update_ratio(-0.5, None)
    assert ind.status == "warn" and ind.lr_advice == "lower" and "updates are large" in ind.recommendation


def test_steps_small_next_to_the_distance_estimate_are_judged_at_the_peak_lr_in_a_cooldown() -> None:
    mon = StepSizeMonitor()
    mon._dhat, mon._update_abs = 1.0, 10.0**-3.5  # noqa: SLF001 - a constructed measurement
    mon.ctx = type("Ctx", (), {"phase": None})()
    assert mon.indicators()[0].status == "warn" and mon.indicators()[0].lr_advice == "raise"
    mon.ctx.phase = RunPhase("end", 400, 400, lr_drop_log10=-1.5)
    ind = mon.indicators()[0]
    assert ind.status == "ok" and "expected" in ind.reason and ind.lr_advice == ""
    assert math.isclose(ind.value, -3.5)
