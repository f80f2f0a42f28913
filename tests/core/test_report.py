"""The health report on constructed runs whose truth is known: the status and the advice a careful
practitioner would give (ok: nothing to do; warn: look at it; bad: act now; n/a: not measurable yet)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import chuck
from chuck.monitors import GradientMonitor, LossMonitor, MonitorContext, StepRecord
from tests.conftest import batch, make_net


def _losses(mon: LossMonitor, losses, start: int = 0) -> None:
    for i, loss in enumerate(losses):
        mon.on_step(StepRecord(start + i, float(loss), 1.0, False))


def _by_name(indicators) -> dict:
    return {i.name: i for i in indicators}


def _late_training(val_falling: bool) -> dict:
    """Steps 5000-5400 of a run whose minibatch loss decays slowly under ordinary noise (log-std 0.25)."""
    rng = np.random.default_rng(0)
    mon = LossMonitor(window=200)
    _losses(mon, [2.3] * 5)  # the start of the run, long ago
    for s in range(5000, 5400):
        mon.on_step(StepRecord(s, 0.30 * math.exp(-s / 3000) * math.exp(0.25 * rng.standard_normal()), 1.0, False))
        if s % 50 == 49:
            mon.on_validation(s, 0.36 * math.exp(-s / 2500) if val_falling else 0.36 * math.exp(-5000 / 2500))
    return _by_name(mon.indicators())


def test_healthy_late_training_raises_no_alarm() -> None:
    ind = _late_training(val_falling=True)
    for name in ("loss.convergence", "loss.oscillation", "loss.spike", "loss.plateau", "loss.overfitting"):
        assert ind[name].status == "ok", (name, ind[name])
        assert ind[name].recommendation == "", (name, ind[name])
    assert "validation loss still falling" in ind["loss.convergence"].reason


def test_real_plateau_is_reported_with_its_remedy() -> None:
    """Training and validation loss both flat for over a window: act (warm restart or decay)."""
    rng = np.random.default_rng(1)
    mon = LossMonitor(window=100)
    _losses(mon, [2.3] * 5)
    for s in range(5, 400):
        loss = 2.3 * math.exp(-s / 20) if s < 100 else 2.3 * math.exp(-5) * math.exp(0.05 * rng.standard_normal())
        mon.on_step(StepRecord(s, loss, 1.0, False))
        if s % 50 == 49:
            mon.on_validation(s, 0.021 * (1 + 0.001 * rng.standard_normal()))  # flat within its jitter
    ind = _by_name(mon.indicators())
    assert ind["loss.plateau"].status == "bad"
    assert "warm restart" in ind["loss.plateau"].recommendation
    assert ind["loss.convergence"].status == "warn" and "decay the lr or stop" in ind["loss.convergence"].recommendation
    assert ind["loss.oscillation"].status == "ok"  # flat and quiet: noise dominates a zero trend, nothing oscillates


def test_real_overfitting_is_bad_and_names_the_best_step() -> None:
    mon = LossMonitor(window=50)
    for s in range(300):
        mon.on_step(StepRecord(s, math.exp(-s / 100), 1.0, False))
        if s % 30 == 29:
            k = s // 30
            mon.on_validation(s, 1.0 - 0.1 * k if k < 4 else 0.6 + 0.08 * (k - 3))  # best (0.68) at step 149, then up
    ind = _by_name(mon.indicators())["loss.overfitting"]
    assert ind.status == "bad"
    assert "step 149" in ind.reason and "stop early" in ind.recommendation and "regularization" in ind.recommendation


def test_large_generalization_gap_is_worth_a_look_even_at_the_best_validation_loss() -> None:
    """Validation 2.8x the training loss, still at its best: not "ok" (a reported case), not yet "bad"."""
    mon = LossMonitor(window=50)
    for s in range(200):
        mon.on_step(StepRecord(s, 0.1 * math.exp(-s / 400), 1.0, False))
        if s % 40 == 39:
            mon.on_validation(s, 2.8 * 0.1 * math.exp(-s / 400) * 1.05)
    ind = _by_name(mon.indicators())["loss.overfitting"]
    assert ind.status == "warn", ind
    assert "x the training loss, though the validation loss is at its best" in ind.reason
    assert "regularization" in ind.recommendation


def _train(opt, model, steps: int) -> None:
    for s in range(steps):
        x, y = batch(s)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step(loss=loss)
        opt.zero_grad()


def test_clipping_on_far_below_the_typical_norm_is_flagged_consistently() -> None:
    """The header's clip and the clip indicator agree: a threshold that cuts every step is a hidden lr cut."""
    model = make_net()
    opt = chuck.ChuckOptimizer(
        torch.optim.AdamW(model.parameters(), lr=1e-3), "constant", model=model, max_grad_norm=1e-3, history=False
    )
    _train(opt, model, 60)
    report = opt.health()
    ind = report["grad.clip_suggestion"]
    assert ind.status == "warn"
    assert "clipping cut 100%" in ind.reason
    assert ind.value > opt.hyperparameters["clip"]  # the suggestion is above the threshold in force...
    assert f"raise the clip threshold towards {ind.value:.3g}" in ind.recommendation  # ...and says so
    assert "clip=0.001" in str(report).splitlines()[0]


def test_clipping_that_cuts_bursts_only_is_ok() -> None:
    model = make_net()
    opt = chuck.ChuckOptimizer(
        torch.optim.AdamW(model.parameters(), lr=1e-3), "constant", model=model, max_grad_norm=1e3, history=False
    )
    _train(opt, model, 60)
    ind = opt.health()["grad.clip_suggestion"]
    assert ind.status == "ok" and ind.recommendation == ""
    assert "no step clipped" in ind.reason
    plain = chuck.ChuckOptimizer(torch.optim.AdamW(make_net().parameters(), lr=1e-3), "constant", history=False)
    assert "clip=off" in str(plain.health()).splitlines()[0]


@pytest.mark.parametrize("steps", [0, 3])
def test_no_data_yet_means_no_advice(steps: int) -> None:
    model = make_net()
    opt = chuck.ChuckOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-3), "constant", model=model, history=False)
    _train(opt, model, steps)
    report = opt.health()
    for ind in report.indicators:
        if ind.status == "n/a":
            assert ind.recommendation == "", ind
            assert ind.reason, ind
    assert report["loss.plateau"].status == "n/a" and "fewer than 8 losses" in report["loss.plateau"].reason
    assert "->" not in str(report)


def test_every_builtin_indicator_advises_only_when_warn_or_bad() -> None:
    """Statuses mean the same everywhere: a recommendation comes with warn or bad, never with ok or n/a."""
    model = make_net()
    opt = chuck.ChuckOptimizer(
        torch.optim.AdamW(model.parameters(), lr=1e-5), "heuristic", model=model, interval=5, history=False
    )
    for steps in (0, 4, 40):
        _train(opt, model, steps)
        for ind in opt.health().indicators:
            if ind.status not in ("warn", "bad"):
                assert ind.recommendation == "", ind


def _grad_monitor(grad: torch.Tensor, eps: float = 1e-8) -> dict:
    p = nn.Parameter(torch.zeros_like(grad))
    p.grad = grad
    mon = GradientMonitor()
    mon.attach(MonitorContext(torch.optim.Adam([p], lr=1e-3, eps=eps), generator=torch.Generator().manual_seed(0)))
    mon.on_decision()
    return _by_name(mon.indicators())


def _sparse_gradient(zero_share: float = 0.8) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    grad = 1e-3 * torch.exp(torch.randn(20000, generator=g))  # |g| mass around 1e-3
    grad[torch.rand(20000, generator=g) < zero_share] = 0.0  # unused rows, dead units
    grad[:50] = 1e-17  # float noise
    return grad


def test_exact_zeros_and_float_noise_are_left_out_of_the_gradient_range() -> None:
    ind = _grad_monitor(_sparse_gradient())["grad.magnitude_histogram"]
    lo, hi = (float(x) for x in ind.reason.split("[")[1].split("]")[0].split(","))
    assert 1e-4 < lo < 1e-3 < hi < 1e-2, ind.reason  # where the real mass lies, not 1e-16
    assert "80% of entries are exactly zero or float noise" in ind.reason
    assert ind.status == "ok" and ind.recommendation == ""  # eps=1e-8 sits far below: nothing to act on


def test_an_epsilon_above_most_gradients_is_worth_acting_on() -> None:
    ind = _grad_monitor(_sparse_gradient(), eps=1e-2)["grad.magnitude_histogram"]
    assert ind.status == "warn"
    assert "lower eps below" in ind.recommendation


def test_a_slow_new_validation_best_is_no_alarm() -> None:
    """Late in a run whose lr was annealed (the demo's end): the training loss is flat within its
    noise and the validation trend is flat, but the last evaluation set a new best by 1%: the run is
    still improving, nothing is to be done now."""
    rng = np.random.default_rng(0)
    mon = LossMonitor(window=100)
    _losses(mon, [2.3] * 5)
    vals = [0.30, 0.20, 0.140, 0.139, 0.150, 0.160, 0.1375]  # a bump, then a new best: the trend is not falling
    for s in range(5, 355):
        mon.on_step(StepRecord(s, 0.03 * math.exp(0.8 * rng.standard_normal()), 1.0, False))
        if s % 50 == 49:
            mon.on_validation(s, vals[s // 50])
    ind = _by_name(mon.indicators())
    for name in ("loss.oscillation", "loss.plateau"):
        assert ind[name].status == "ok", (name, ind[name])
