"""Gradient noise is judged against the run's own early level (McCandlish et al. 2018's noise scale,
measured from the two sampled gradients before each decision), not against a fixed share."""

from __future__ import annotations

import math

import torch
from torch import nn

from chuck.monitors import GradientMonitor, MonitorContext
from chuck.monitors.base import RunPhase

DIM = 4096


def _monitor() -> tuple[GradientMonitor, nn.Parameter]:
    p = nn.Parameter(torch.zeros(DIM))
    mon = GradientMonitor()
    mon.attach(MonitorContext(torch.optim.SGD([p], lr=0.1), generator=torch.Generator().manual_seed(0)))
    return mon, p


def _decisions(mon: GradientMonitor, p: nn.Parameter, signal: float, noise: float, n: int, seed: int) -> None:
    """``n`` decision intervals whose two sampled gradients are a fixed signal plus independent noise
    (per-entry scales ``signal`` and ``noise``: B_noise/B = noise^2 / signal^2)."""
    gen = torch.Generator().manual_seed(seed)
    direction = torch.ones(DIM)
    for _ in range(n):
        for _ in range(2):
            p.grad = signal * direction + noise * torch.randn(DIM, generator=gen)
            mon.before_update()
        mon.on_decision()


def test_noise_at_its_early_level_is_ok_however_large_a_share_it_is() -> None:
    """A run whose gradients were noise-dominated from the start (B_noise/B = 16): the old fixed
    threshold on the signal share called this bad in every run; against its own level it is fine."""
    mon, p = _monitor()
    _decisions(mon, p, signal=0.25, noise=1.0, n=12, seed=0)
    now, early = mon.noise_to_signal()
    assert 8 < early < 32 and 8 < now < 32
    ind = {i.name: i for i in mon.indicators()}["grad.noise"]
    assert ind.status == "ok" and ind.recommendation == "" and ind.lr_advice == ""
    assert "early in the run" in ind.reason


def test_noise_that_outgrew_the_lr_asks_for_a_decay_except_in_a_cooldown() -> None:
    mon, p = _monitor()
    _decisions(mon, p, signal=1.0, noise=0.5, n=3, seed=1)  # early: B_noise/B about 0.25
    _decisions(mon, p, signal=0.02, noise=0.5, n=20, seed=2)  # later: about 600, the lr never lowered
    ind = {i.name: i for i in mon.indicators()}["grad.noise"]
    assert ind.status == "warn" and ind.lr_advice == "lower" and "decay the learning rate" in ind.recommendation
    mon.ctx.phase = RunPhase("cooldown", 900, 1000, lr_drop_log10=-1.0)
    ind = {i.name: i for i in mon.indicators()}["grad.noise"]
    assert ind.status == "ok" and "expected" in ind.reason
    mon.ctx.phase = RunPhase("middle", 500, 1000, lr_drop_log10=-3.0)  # the lr already fell as far
    assert {i.name: i for i in mon.indicators()}["grad.noise"].status == "ok"


def test_noise_is_not_measurable_before_the_early_level_is() -> None:
    mon, p = _monitor()
    _decisions(mon, p, signal=1.0, noise=1.0, n=2, seed=3)
    ind = {i.name: i for i in mon.indicators()}["grad.noise"]
    assert ind.status == "n/a" and "2 of 3" in ind.reason and not math.isnan(ind.value)
