"""The start guard: a run that blows up in its first steps goes back to its starting weights at a
tenth of the lr; a healthy run is never touched."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import chuck
from chuck.core.checkpoint import CheckpointError
from chuck.core.guardrails import GuardrailConfig
from chuck.core.restart import StartGuard
from tests.conftest import batch, make_net, run_steps


def _regression(seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 8, generator=g)
    y = x @ torch.randn(8, 1, generator=g) + 0.1 * torch.randn(256, 1, generator=g)
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1)), x, y


def _train(model, opt, x, y, steps: int) -> list[float]:
    losses = []
    for s in range(steps):
        i = torch.arange(s * 32, s * 32 + 32) % len(x)
        loss = F.mse_loss(model(x[i]), y[i])
        loss.backward()
        opt.step(loss=loss)
        opt.zero_grad()
        losses.append(float(loss.detach()))
    return losses


def _restarts(opt) -> list:
    return [d for d in opt.decisions if d.source == "guardrail" and d.reason.startswith("restart")]


def _sgd_run(lr: float, config: GuardrailConfig | None = None, steps: int = 120):
    model, x, y = _regression()
    opt = chuck.ChuckOptimizer(
        torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9), "constant", guardrails=config or True, model=model
    )
    _train(model, opt, x, y, steps)
    with torch.no_grad():
        final = float(F.mse_loss(model(x), y))
    return opt, model, final


def test_a_start_far_too_high_restarts_and_ends_far_lower_than_without_the_guard() -> None:
    # at lr 0.1 SGD + momentum climbs on this regression over its first 20 steps (without the guard the
    # spike rollbacks and the policy cannot save it: 3.2); its best lr is about 0.01
    opt, _, final = _sgd_run(0.1)
    off, _, final_off = _sgd_run(0.1, GuardrailConfig(restart_window=0))
    assert _restarts(opt)
    assert not _restarts(off)
    assert opt.action_spec.lr_mult <= 0.1 + 1e-9  # the restart's cut stays
    assert final < 0.1 and final < final_off / 10  # the loss starts at 7.2


def test_a_healthy_start_is_never_touched() -> None:
    opt, model, final = _sgd_run(1e-2)
    off, model_off, final_off = _sgd_run(1e-2, GuardrailConfig(restart_window=0))
    assert not _restarts(opt)
    assert final == final_off  # the guard only watched: the same run, bit for bit
    for a, b in zip(model.parameters(), model_off.parameters()):
        assert torch.equal(a, b)


def test_restarts_stop_after_max_restarts() -> None:
    model = make_net()
    cfg = GuardrailConfig(restart_window=50, max_restarts=2, restart_factor=0.5)
    opt = chuck.ChuckOptimizer(torch.optim.SGD(model.parameters(), lr=1e-2), "constant", guardrails=cfg, model=model)
    for s in range(120):  # a loss that climbs 20% a step whatever the weights: every window sees a blow-up
        x, y = batch(s)
        F.cross_entropy(model(x), y).backward()
        opt.step(loss=torch.tensor(1.2**s))
        opt.zero_grad()
    assert len(_restarts(opt)) == 2
    assert not opt.guardrails.start.active
    assert opt.action_spec.lr_mult == pytest.approx(0.25)


def test_a_restart_restores_the_exact_starting_weights_and_a_fresh_optimizer() -> None:
    model = make_net()
    start = copy.deepcopy(model.state_dict())
    inner = torch.optim.Adam(model.parameters(), lr=1e-2)
    guard = StartGuard(window=50, rise=1.0, max_restarts=3)
    params = list(model.parameters())
    guard.begin(params, inner, list(model.buffers()))
    for s in range(5):
        x, y = batch(s)
        F.cross_entropy(model(x), y).backward()
        inner.step()
        inner.zero_grad()
        guard.updated()
    assert inner.state  # Adam has moments now
    guard.restore(params, inner, list(model.buffers()))
    for k, v in model.state_dict().items():
        assert torch.equal(v, start[k])
    assert not inner.state
    assert guard.restarts == 1 and guard.updates == 0 and guard.active


@pytest.mark.parametrize("loss", [float("nan"), float("inf")])
def test_a_nonfinite_loss_is_left_to_the_guardrails_and_not_counted(loss: float) -> None:
    model = make_net()
    guard = StartGuard(window=50, rise=1.0, max_restarts=3)
    guard.begin(list(model.parameters()), torch.optim.SGD(model.parameters(), lr=0.1), [])
    assert guard.check(loss, 1.0) is None and guard.losses == []


def test_a_noisy_but_flat_loss_does_not_restart() -> None:
    model = make_net()
    guard = StartGuard(window=50, rise=1.0, max_restarts=3)
    guard.begin(list(model.parameters()), torch.optim.SGD(model.parameters(), lr=0.1), [])
    gen = torch.Generator().manual_seed(0)
    fired = [guard.check(float(1.0 + 0.5 * torch.rand(1, generator=gen)), 1.0) for _ in range(40)]
    assert not any(fired)
    assert guard.check(10.0, 1.0) is None  # one high minibatch is not a median
    assert [guard.check(10.0, 1.0) for _ in range(4)][-1] is not None  # five in a row are


def test_the_guard_ends_after_its_window() -> None:
    model = make_net()
    guard = StartGuard(window=3, rise=1.0, max_restarts=3)
    guard.begin(list(model.parameters()), torch.optim.SGD(model.parameters(), lr=0.1), [])
    for _ in range(3):
        guard.updated()
    assert not guard.active and not guard.can_restore(list(model.parameters()))
    assert guard.check(100.0, 1.0) is None


def test_a_resumed_run_keeps_its_restart_count_and_no_start_to_go_back_to() -> None:
    opt, model, _ = _sgd_run(0.1, steps=30)
    n = opt.guardrails.start.restarts
    assert n >= 1
    state = opt.state_dict()
    again = chuck.ChuckOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9), "constant", guardrails=True, model=model
    )
    again.load_state_dict(state)
    assert again.guardrails.start.restarts == n and not again.guardrails.start.active


@pytest.mark.parametrize(
    "bad",
    [{"restart_factor": 1.0}, {"restart_factor": 0.0}, {"restart_window": -1}, {"max_restarts": 1.5}, {"restart_rise": -1.0}],
)
def test_bad_restart_settings_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        GuardrailConfig(**bad)


def _climbing_run(observe_before: int = 0, add_group_at: int | None = None):
    """A loss that climbs 20% a step whatever the weights (a blow-up at once), with validation losses
    observed over the first steps."""
    model = make_net()
    opt = chuck.ChuckOptimizer(torch.optim.Adam(model.parameters(), lr=1e-3), "constant", guardrails=True, model=model)
    for s in range(30):
        x, y = batch(s)
        F.cross_entropy(model(x), y).backward()
        opt.step(loss=torch.tensor(1.2**s))
        opt.zero_grad()
        if s < observe_before:
            opt.observe(val_loss=1.0 / (s + 1))
        if _restarts(opt):
            break
    return opt


def test_a_restart_forgets_the_blown_up_runs_best_validation_loss() -> None:
    opt = _climbing_run(observe_before=8)
    assert _restarts(opt)
    g = opt.guardrails
    assert g.best_val == float("inf") and not g.best.exists  # no rollback back into the run that blew up


def test_a_changed_trainable_set_before_the_first_update_retakes_the_start() -> None:
    model = make_net()
    opt = chuck.ChuckOptimizer(torch.optim.SGD(model.hidden.parameters(), lr=1e-2), "constant", guardrails=True, model=model)
    opt.add_param_group({"params": list(model.out.parameters())})
    x, y = batch(0)
    F.cross_entropy(model(x), y).backward()
    opt.step(loss=torch.tensor(1.0))
    assert opt.guardrails.start.can_restore(opt._ctx.params)


def test_a_failed_checkpoint_load_leaves_the_start_guard_as_it_was() -> None:
    from tests.core.test_checkpoint_fuzz import _BrittleMonitor  # its load fails after the guardrails loaded

    def fresh(steps: int) -> tuple[torch.nn.Module, chuck.ChuckOptimizer]:
        model = make_net()
        opt = chuck.ChuckOptimizer(
            torch.optim.Adam(model.parameters(), lr=1e-3), "constant", guardrails=True, model=model, monitors=[_BrittleMonitor()]
        )
        opt.advise = False
        run_steps(model, opt, 0, steps)
        return model, opt

    _, source = fresh(60)
    _, target = fresh(3)
    guard = target.guardrails.start
    assert guard.active and guard.can_restore(target._ctx.params)
    with pytest.raises(CheckpointError):
        target.load_state_dict(source.state_dict())
    assert target.guardrails.start is guard and guard.active and guard.can_restore(target._ctx.params)


def test_the_run_record_counts_the_restarts(tmp_path) -> None:
    from chuck.history import read_history

    model, x, y = _regression()
    opt = chuck.ChuckOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), "constant", guardrails=True, model=model, history=str(tmp_path)
    )
    _train(model, opt, x, y, 40)
    opt.close()
    assert read_history(tmp_path).row(0, named=True)["outcome_restarts"] == opt.guardrails.start.restarts >= 1
