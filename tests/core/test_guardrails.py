"""Injected NaN/inf and loss spikes never make weights non-finite; rollback restores the snapshot."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import chuck
from chuck.core.guardrails import GuardrailConfig
from tests.conftest import batch, make_net


def _step(model, opt, step: int, *, loss_scale: float = 1.0, grad_fault: float | None = None):
    x, y = batch(step)
    loss = F.cross_entropy(model(x), y) * loss_scale
    loss.backward()
    if grad_fault is not None:
        model.hidden.weight.grad[0, 0] = grad_fault
    opt.step(loss=loss)
    opt.zero_grad()
    return loss


def _all_finite(model) -> bool:
    return all(torch.isfinite(p).all() for p in model.parameters())


def _state_copy(opt):
    return {id(p): {k: (v.clone() if torch.is_tensor(v) else v) for k, v in s.items()} for p, s in opt.state.items()}


@pytest.mark.parametrize("fault", ["nan_loss", "inf_loss", "nan_grad", "inf_grad"])
def test_nonfinite_step_is_skipped(fault: str) -> None:
    model = make_net()
    opt = chuck.ChuckOptimizer(torch.optim.Adam(model.parameters(), lr=1e-2), "constant", guardrails=True, model=model)
    for s in range(30):
        _step(model, opt, s)
    weights = copy.deepcopy(model.state_dict())
    state = _state_copy(opt)
    mult = opt.action_spec.lr_mult
    kwargs = {
        "nan_loss": {"loss_scale": math.nan},
        "inf_loss": {"loss_scale": math.inf},
        "nan_grad": {"grad_fault": math.nan},
        "inf_grad": {"grad_fault": math.inf},
    }[fault]
    _step(model, opt, 30, **kwargs)
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), f"{fault}: {k} changed on a skipped step"
    for p, s in opt.state.items():
        for k, v in s.items():
            assert torch.equal(v, state[id(p)][k]) if torch.is_tensor(v) else v == state[id(p)][k]
    assert opt.step_count == 30
    assert opt.action_spec.lr_mult == pytest.approx(mult * 0.5)
    assert opt.decisions[-1].source == "guardrail" and "skip_nonfinite" in opt.decisions[-1].reason
    for s in range(31, 60):  # training goes on
        _step(model, opt, s)
    assert _all_finite(model) and opt.step_count == 59


def test_a_lone_spike_is_skipped_and_costs_nothing_else() -> None:
    """A corrupted batch (a 1000x loss) leaves the weights unharmed: its step is skipped, nothing is
    rolled back and the lr is not cut."""
    model = make_net()
    opt = chuck.ChuckOptimizer(
        torch.optim.AdamW(model.parameters(), lr=1e-2), "constant", model=model, guardrails=GuardrailConfig(snapshot_every=50)
    )
    for s in range(60):
        _step(model, opt, s)
    weights = copy.deepcopy(model.state_dict())
    _step(model, opt, 60, loss_scale=1000.0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), f"{k} changed on a skipped spike"
    assert opt.guardrails.rollbacks == 0 and opt.guardrails.skips == 1
    assert "skip_spike" in opt.decisions[-1].reason
    assert opt.action_spec.lr_mult == 1.0
    for s in range(61, 100):
        _step(model, opt, s)
    assert opt.guardrails.skips == 1 and _all_finite(model)


def test_a_repeated_spike_rolls_back_to_the_snapshot_and_the_cut_recovers() -> None:
    """Two spikes in a row: the weights are what went bad, so they go back to the snapshot (with their
    optimizer state) and the lr is backed off; healthy steps then undo the cut."""
    model = make_net()
    config = GuardrailConfig(snapshot_every=50, recovery_steps=20)
    opt = chuck.ChuckOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-2), "constant", model=model, guardrails=config)
    for s in range(50):
        _step(model, opt, s)
    snap_weights = copy.deepcopy(model.state_dict())
    snap_state = _state_copy(opt)
    for s in range(50, 60):  # move away from the snapshot
        _step(model, opt, s)
    assert not torch.equal(model.hidden.weight, snap_weights["hidden.weight"])

    _step(model, opt, 60, loss_scale=1000.0)
    _step(model, opt, 61, loss_scale=1000.0)

    for k, v in model.state_dict().items():
        assert torch.equal(v, snap_weights[k]), f"{k} was not restored"
    for p, s in opt.state.items():
        for k, v in s.items():
            if torch.is_tensor(v):
                assert torch.equal(v, snap_state[id(p)][k])
    assert opt.guardrails.rollbacks == 1
    assert "rollback_spike" in opt.decisions[-1].reason and "restored step 50" in opt.decisions[-1].reason
    assert opt.action_spec.lr_mult == pytest.approx(0.5)
    for s in range(62, 62 + 10):
        _step(model, opt, s)
    assert 0.5 < opt.action_spec.lr_mult < 1.0  # recovering
    for s in range(72, 100):
        _step(model, opt, s)
    assert opt.action_spec.lr_mult == pytest.approx(1.0) and opt.guardrails.debt == pytest.approx(0.0)
    assert _all_finite(model)


def test_weights_that_overflow_every_step_are_rolled_back_once_a_streak() -> None:
    """Weights made finite but huge (as one step at a far too high lr leaves them) overflow the loss at
    every step: skipping alone would leave the run stuck for good. After max_rollbacks_in_a_row (3)
    non-finite steps they go back to the snapshot, and training goes on."""
    model = make_net()
    opt = chuck.ChuckOptimizer(
        torch.optim.AdamW(model.parameters(), lr=1e-2), "constant", model=model, guardrails=GuardrailConfig(snapshot_every=50)
    )
    for s in range(55):
        _step(model, opt, s)
    with torch.no_grad():  # injected: the weights blow up between two steps (finite, but every loss overflows)
        for p in model.parameters():
            p.mul_(1e30)
    for s in range(55, 58):
        _step(model, opt, s)
    assert opt.guardrails.skips == 2 and opt.guardrails.rollbacks == 1
    assert "rollback_nonfinite" in opt.decisions[-1].reason and "restored step 50" in opt.decisions[-1].reason
    assert opt.action_spec.lr_mult == pytest.approx(0.5**3)  # two skips and the rollback each back off
    for s in range(58, 100):
        loss = _step(model, opt, s)
        assert math.isfinite(loss.item())
    assert opt.step_count == 55 + (100 - 58)  # the count of steps taken goes on (as after a spike rollback)


def test_a_loss_that_is_never_finite_is_said_once_and_rolled_back_only_once() -> None:
    """A loss non-finite whatever the weights (a bug in the loss, NaN data): one rollback, then skips, and
    one warning pointing at the user's opt.step line; training resumes when the loss does."""
    import warnings

    from chuck.core.guardrails import NONFINITE_WARN_AFTER

    model = make_net()
    opt = chuck.ChuckOptimizer(
        torch.optim.AdamW(model.parameters(), lr=1e-2), "constant", model=model, guardrails=GuardrailConfig(snapshot_every=50)
    )
    for s in range(55):
        _step(model, opt, s)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for s in range(55, 55 + 2 * NONFINITE_WARN_AFTER):
            _step(model, opt, s, loss_scale=math.nan)
    said = [w for w in caught if "non-finite loss or gradient norm" in str(w.message)]
    assert len(said) == 1 and "went back to the snapshot of step 50 once, which did not help" in str(said[0].message)
    assert said[0].filename == __file__  # the warning points at the loop's opt.step(...)
    assert opt.guardrails.rollbacks == 1 and opt.guardrails.skips == 2 * NONFINITE_WARN_AFTER - 1
    for s in range(100, 120):  # the loss is finite again: training goes on from the restored weights
        _step(model, opt, s)
    assert opt.step_count == 55 + 20 and _all_finite(model)


def test_exploding_run_never_goes_nonfinite() -> None:
    """A learning rate far too high, with every guardrail on: weights stay finite."""
    model = make_net()
    opt = chuck.ChuckOptimizer(torch.optim.SGD(model.parameters(), lr=50.0), "heuristic", model=model)
    for s in range(200):
        _step(model, opt, s, loss_scale=1.0 if s % 37 else math.nan)
        assert _all_finite(model), f"non-finite weights at step {s}"
    assert opt.guardrails.skips + opt.guardrails.rollbacks > 0


class _BadPolicy(chuck.Policy):
    name = "bad"
    version = "0"

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def act(self, observation):
        if self.mode == "raise":
            raise RuntimeError("boom")
        if self.mode == "nan":
            return np.full(4, np.nan)
        return np.zeros(7)


@pytest.mark.parametrize("mode,needle", [("raise", "RuntimeError: boom"), ("nan", "non-finite"), ("shape", "shape")])
def test_failing_policy_holds(mode: str, needle: str) -> None:
    model = make_net()
    opt = chuck.ChuckOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), _BadPolicy(mode), model=model)
    before = opt.hyperparameters
    for s in range(45):
        _step(model, opt, s)
    assert opt.hyperparameters == before
    assert len(opt.decisions) == 2
    assert all(d.source == "fallback" and needle in d.reason for d in opt.decisions)


def test_gradscaler_skips_are_detected_and_not_progress() -> None:
    model = make_net()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    opt = chuck.ChuckOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), "constant", guardrails=True, model=model, grad_scaler=scaler
    )
    for s in range(12):
        x, y = batch(s)
        loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        if s in (4, 9):
            model.hidden.weight.grad[0, 0] = math.inf  # overflow: the scaler skips this step
        scaler.step(opt, loss=loss)
        scaler.update()
        opt.zero_grad()
    assert opt.step_count == 10
    assert opt.guardrails.amp_overflows == 2
    assert opt.action_spec.lr_mult == 1.0, "a routine GradScaler overflow is no reason to back off"
    assert _all_finite(model)


def _amp_run(overflow_steps: set[int], steps: int = 600) -> chuck.ChuckOptimizer:
    model = make_net()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=50)
    opt = chuck.ChuckOptimizer(
        torch.optim.SGD(model.parameters(), lr=1e-3), "heuristic", model=model, grad_scaler=scaler, history=False
    )
    for s in range(steps):
        x, y = batch(s)
        loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        if s in overflow_steps:
            model.hidden.weight.grad[0, 0] = math.inf
        scaler.step(opt, loss=loss)
        scaler.update()
        opt.zero_grad()
    return opt


def test_routine_gradscaler_overflows_do_not_cut_the_lr() -> None:
    """29 overflows in 3000 steps drove the heuristic's lr multiplier to 0.35
    against 22.6 without them. Overflows must not read as instability."""
    clean = _amp_run(set())
    noisy = _amp_run(set(range(30, 600, 60)))  # 10 overflows in 600 steps
    assert noisy.guardrails.amp_overflows == 10
    assert all(d.observation.get("ctrl.skip_rate", 0.0) == 0.0 for d in noisy.decisions if d.source == "policy")
    ratio = noisy.action_spec.lr_mult / clean.action_spec.lr_mult
    assert 0.5 <= ratio <= 2.0, (noisy.action_spec.lr_mult, clean.action_spec.lr_mult)


def test_lasting_level_shift_does_not_roll_back_forever() -> None:
    """A loss that jumps 100x for good (new data phase) is skipped, rolled back once, then accepted; the
    rollback's lr cut is undone with it."""
    model = make_net()
    opt = chuck.ChuckOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-3), "constant", guardrails=True, model=model)
    for s in range(60):
        _step(model, opt, s)
    for s in range(60, 200):
        _step(model, opt, s, loss_scale=100.0)
    assert opt.guardrails.rollbacks == 1
    assert any("accept_level_shift" in d.reason for d in opt.decisions)
    assert opt.action_spec.lr_mult == pytest.approx(1.0)
    assert opt.step_count >= 200 - 3 - 1  # training went on
    assert _all_finite(model)


def test_snapshot_waits_for_a_healthy_loss() -> None:
    model = make_net()
    opt = chuck.ChuckOptimizer(
        torch.optim.AdamW(model.parameters(), lr=1e-3), "constant", model=model, guardrails=GuardrailConfig(snapshot_every=50)
    )
    for s in range(49):
        _step(model, opt, s)
    assert opt.guardrails.snapshot_step == 0  # the starting state, kept before the first update
    _step(model, opt, 49, loss_scale=5.0)  # step 50 is due, but its loss is 5x the median: not taken yet
    assert opt.guardrails.snapshot_step == 0
    _step(model, opt, 50)
    assert opt.guardrails.snapshot_step == 51


def test_noise_on_a_near_zero_loss_is_no_spike() -> None:
    """Once the loss is a thousandfold below its start, minibatches 10-20x the median are routine:
    no rollback, no backoff (they drove a ResNet's lr to its floor on the validation split)."""
    model = make_net()
    opt = chuck.ChuckOptimizer(
        torch.optim.SGD(model.parameters(), lr=1e-3), "constant", guardrails=True, model=model, history=False
    )
    g = torch.Generator().manual_seed(0)
    for s in range(200):
        x, y = batch(s)
        scale = 1.0 if s < 5 else 1e-3 * float(torch.empty(1).log_normal_(0.0, 1.0, generator=g))
        loss = F.cross_entropy(model(x), y) * scale
        loss.backward()
        opt.step(loss=loss)
        opt.zero_grad()
    assert opt.guardrails.rollbacks == 0 and opt.guardrails.skips == 0
    assert opt.action_spec.lr_mult == 1.0
    # a real divergence, back above a tenth of the starting loss, is still caught
    x, y = batch(999)
    (F.cross_entropy(model(x), y) * 0.5).backward()
    opt.step(loss=torch.tensor(0.5))
    assert opt.guardrails.rollbacks + opt.guardrails.skips == 1


def test_a_non_finite_streak_survives_a_checkpoint() -> None:
    """Two non-finite steps, a checkpoint, a resumed run: its next non-finite step is the streak's third,
    which rolls back (a resumed run restarting the count would skip three more first)."""
    model = make_net()
    opt = chuck.ChuckOptimizer(
        torch.optim.AdamW(model.parameters(), lr=1e-2), "constant", model=model, guardrails=GuardrailConfig(snapshot_every=50)
    )
    for s in range(55):
        _step(model, opt, s)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1e30)
    for s in range(55, 57):
        _step(model, opt, s)
    assert opt.guardrails.nonfinite_in_a_row == 2 and opt.guardrails.rollbacks == 0
    weights, state = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    resumed = make_net()
    resumed.load_state_dict(weights)
    again = chuck.ChuckOptimizer(
        torch.optim.AdamW(resumed.parameters(), lr=1e-2), "constant", model=resumed, guardrails=GuardrailConfig(snapshot_every=50)
    )
    again.load_state_dict(state)
    _step(resumed, again, 57)
    assert again.guardrails.rollbacks == 1 and "rollback_nonfinite" in again.decisions[-1].reason
