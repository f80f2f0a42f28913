"""Each monitor on a constructed case whose truth is known reports the expected status."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import chuck
from chuck.monitors import ActivationMonitor, GradientMonitor, LossMonitor, MonitorContext, StepRecord


def _attached(monitor, *params, optimizer=None):
    """A monitor attached, as the suite would, to a run over ``params``."""
    opt = optimizer or torch.optim.SGD(list(params) or [nn.Parameter(torch.zeros(1))], lr=0.0)
    monitor.attach(MonitorContext(opt, generator=torch.Generator().manual_seed(0)))
    return monitor


def _grad_norm(mon, norm: float, step: int) -> None:
    mon.on_step(StepRecord(step, None, norm, False))


def _loss(mon, loss: float, step: int) -> None:
    mon.on_step(StepRecord(step, loss, 1.0, False))


def _drive(model, opt, steps: int, data, loss_fn=F.cross_entropy):
    for s in range(steps):
        x, y = data(s)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step(loss=loss)
        opt.zero_grad()


def _data(s: int):
    g = torch.Generator().manual_seed(s)
    x = torch.randn(64, 10, generator=g)
    return x, (x[:, 0] > 0).long()


def test_dead_relus_are_reported_bad() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
    with torch.no_grad():
        model[0].bias.fill_(-100.0)  # every unit negative for every input
    opt = chuck.ChuckOptimizer(torch.optim.SGD(model.parameters(), lr=1e-3), "constant", model=model)
    _drive(model, opt, 40, _data)
    h = opt.health()
    assert h["act.dead_relu"].status == "bad"
    assert h["act.dead_relu"].value == 1.0
    assert h["act.saturation"].status == "ok"


def test_healthy_relus_are_ok() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
    opt = chuck.ChuckOptimizer(torch.optim.SGD(model.parameters(), lr=1e-2), "constant", model=model)
    _drive(model, opt, 40, _data)
    assert opt.health()["act.dead_relu"].status == "ok"


def test_saturated_tanh_is_reported_bad() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 2))
    with torch.no_grad():
        model[0].weight.mul_(200.0)
    opt = chuck.ChuckOptimizer(torch.optim.SGD(model.parameters(), lr=1e-3), "constant", model=model)
    _drive(model, opt, 40, _data)
    assert opt.health()["act.saturation"].status == "bad"


def test_functional_relu_falls_back_to_preactivations() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(10, 16), nn.Linear(16, 2)

        def forward(self, x):
            return self.b(F.relu(self.a(x)))

    torch.manual_seed(0)
    model = Net()
    with torch.no_grad():
        model.a.bias.fill_(-100.0)
    opt = chuck.ChuckOptimizer(torch.optim.SGD(model.parameters(), lr=1e-3), "constant", model=model)
    _drive(model, opt, 40, _data)
    assert opt.health()["act.dead_relu"].status == "bad"


def test_exploding_gradients_are_reported_bad() -> None:
    mon = _attached(GradientMonitor(window=100), nn.Parameter(torch.ones(10)))
    for s in range(60):
        _grad_norm(mon, 1.2**s, s)
    ind = {i.name: i for i in mon.indicators()}
    assert ind["grad.exploding"].status == "bad"
    assert math.isfinite(ind["grad.clip_suggestion"].value)


def test_steady_gradients_are_not_exploding() -> None:
    mon = _attached(GradientMonitor(window=100), nn.Parameter(torch.ones(3)))
    for s in range(60):
        _grad_norm(mon, 1.0 + 0.1 * math.sin(s), s)
    assert {i.name: i for i in mon.indicators()}["grad.exploding"].status == "ok"


def test_vanishing_gradients_across_layers() -> None:
    a, b = nn.Parameter(torch.zeros(100)), nn.Parameter(torch.zeros(100))
    a.grad, b.grad = torch.randn(100), torch.randn(100) * 1e-6
    mon = _attached(GradientMonitor(), a, b)
    mon.on_decision()
    ind = {i.name: i for i in mon.indicators()}
    assert ind["grad.vanishing"].status == "bad"
    assert ind["grad.vanishing"].value < -4


def test_overfitting_run_is_reported() -> None:
    mon = LossMonitor(window=50)
    for s in range(300):
        _loss(mon, math.exp(-s / 100), s)  # training loss keeps falling
        if s % 30 == 29:
            k = s // 30
            mon.on_validation(s, 1.0 - 0.1 * k if k < 4 else 0.6 + 0.08 * (k - 3))  # val turns up
    ind = {i.name: i for i in mon.indicators()}
    assert ind["loss.overfitting"].status == "bad"
    assert ind["loss.convergence"].status == "ok"


def test_no_overfitting_while_val_falls() -> None:
    mon = LossMonitor(window=50)
    for s in range(300):
        _loss(mon, math.exp(-s / 100), s)
        if s % 30 == 29:
            mon.on_validation(s, math.exp(-s / 120))
    assert {i.name: i for i in mon.indicators()}["loss.overfitting"].status == "ok"


def test_plateau_is_reported_bad() -> None:
    mon = LossMonitor(window=50)
    for s in range(200):
        _loss(mon, 0.7 + 0.001 * math.sin(s), s)
    ind = {i.name: i for i in mon.indicators()}
    assert ind["loss.plateau"].status == "bad"
    assert ind["loss.convergence"].status in ("warn", "bad")


def test_converging_run_has_no_plateau() -> None:
    mon = LossMonitor(window=50)
    for s in range(200):
        _loss(mon, math.exp(-s / 50), s)
    ind = {i.name: i for i in mon.indicators()}
    assert ind["loss.plateau"].status == "ok"
    assert ind["loss.convergence"].status == "ok"


def test_activation_monitor_costs_nothing_when_not_armed() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    mon = _attached(ActivationMonitor(model), *model.parameters())
    assert not mon.armed and all(len(m._forward_hooks) == 0 for m in model.modules())
    mon.arm()
    assert mon.armed
    model(torch.randn(3, 4))
    mon.on_decision()
    assert not mon.armed and all(len(m._forward_hooks) == 0 for m in model.modules())
    assert mon.stats()["act.has_data"] == 1.0


def test_hooks_a_compiled_model_never_runs_are_reported_once() -> None:
    """A torch.compile'd model runs its compiled graph without hooks added after compilation: chuck
    says so once, reads the activation features as missing, and watches everything else."""
    import warnings

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 2))
    compiled = torch.compile(model, backend="eager")  # dynamo without a code generator: no C++ compiler needed
    opt = chuck.ChuckOptimizer(torch.optim.Adam(model.parameters(), 1e-3), "heuristic", model=compiled, history=False, interval=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _drive(compiled, opt, 21, _data)
    said = [w for w in caught if "activation hooks did not run" in str(w.message)]
    assert len(said) == 1 and said[0].category is RuntimeWarning
    stats = opt.stats()
    assert stats["act.has_data"] == 0.0 and math.isnan(stats["act.dead_fraction"])
    assert len(opt.decisions) == 4 and math.isfinite(stats["weights.update_ratio_log10"])


def test_an_eager_model_gives_no_such_warning() -> None:
    import warnings

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = chuck.ChuckOptimizer(torch.optim.Adam(model.parameters(), 1e-3), "heuristic", model=model, history=False, interval=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        _drive(model, opt, 21, _data)
    assert opt.stats()["act.has_data"] == 1.0


def test_histogram_and_eps_range() -> None:
    p = nn.Parameter(torch.zeros(10_000))
    p.grad = 10.0 ** torch.empty(10_000).uniform_(-6, -3)
    mon = _attached(GradientMonitor(), p, optimizer=torch.optim.Adam([p], eps=1e-8))
    mon.on_decision()
    lo, hi = mon.suggested_eps_range()
    assert 1e-6 <= lo < 1e-5 and 1e-4 < hi <= 1e-3
    edges, mass = mon.histogram()
    assert mass.sum() == 1.0 or abs(mass.sum() - 1.0) < 1e-9
    assert mass[edges[:-1].tolist().index(-5.0)] > 0.2
    assert mon.stats()["grad.eps_sgd_fraction"] == 0.0
