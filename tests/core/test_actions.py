"""The effective lr on every param group: ``group["chuck_effective_lr"]``.

``group["lr"]`` keeps the user's (or their scheduler's) value under the multiplier design; the
value the optimizer really uses must still be readable where people look, on the groups.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import chuck
from chuck.core.actions import EFFECTIVE_LR_KEY, ActionSpec
from tests.conftest import batch, make_net

UP = math.exp(ActionSpec().steps[0])  # the lr factor of one full step up


def _two_group_opt():
    model = make_net()
    base = torch.optim.SGD(
        [{"params": model.hidden.parameters(), "lr": 0.1}, {"params": model.out.parameters(), "lr": 0.01}], lr=0.05
    )
    return model, chuck.ChuckOptimizer(base, "constant", guardrails=True, model=model, history=False)


def _step(model, opt, step: int, scale: float = 1.0) -> None:
    x, y = batch(step)
    loss = F.cross_entropy(model(x), y) * scale
    loss.backward()
    opt.step(loss=loss)
    opt.zero_grad()


def test_every_group_carries_its_effective_lr() -> None:
    model, opt = _two_group_opt()
    assert chuck.EFFECTIVE_LR_KEY == EFFECTIVE_LR_KEY == "chuck_effective_lr"
    assert [g[EFFECTIVE_LR_KEY] for g in opt.param_groups] == [0.1, 0.01], "published from the start"
    opt.apply_action([1.0, 0.0, 0.0, 0.0])  # a decision
    assert [g[EFFECTIVE_LR_KEY] for g in opt.param_groups] == pytest.approx([0.1 * UP, 0.01 * UP])
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.01], "the user's values stay in group['lr']"
    _step(model, opt, 0)
    assert [g[EFFECTIVE_LR_KEY] for g in opt.param_groups] == pytest.approx([0.1 * UP, 0.01 * UP])
    assert opt.effective_lrs() == pytest.approx([0.1 * UP, 0.01 * UP])


def test_the_key_is_what_the_base_step_uses_and_follows_a_scheduler() -> None:
    model, opt = _two_group_opt()
    used: list[float] = []
    opt.optimizer.register_step_pre_hook(lambda base, *_: used.append(base.param_groups[0]["lr"]))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5**s)
    opt.apply_action([1.0, 0.0, 0.0, 0.0])
    for step in range(4):
        published = opt.param_groups[0][EFFECTIVE_LR_KEY]
        fresh = opt.effective_lrs()[0]
        _step(model, opt, step)
        assert used[-1] == pytest.approx(fresh), "effective_lrs() reads the lr the coming step uses"
        assert opt.param_groups[0][EFFECTIVE_LR_KEY] == pytest.approx(used[-1]), "refreshed at the step"
        if step:  # the scheduler stepped after the previous step: the key followed at this one
            assert published == pytest.approx(used[-2])
        sched.step()
    assert opt.effective_lrs()[0] == pytest.approx(0.1 * 0.5**4 * UP)


def test_guardrail_backoff_and_checkpoints_update_the_key() -> None:
    model, opt = _two_group_opt()
    _step(model, opt, 0)
    _step(model, opt, 1, scale=math.nan)  # skipped: the guardrails back the lr off
    assert opt.action_spec.lr_mult < 1.0
    assert opt.param_groups[0][EFFECTIVE_LR_KEY] == pytest.approx(0.1 * opt.action_spec.lr_mult)
    state = opt.state_dict()
    model2, opt2 = _two_group_opt()
    opt2.load_state_dict(state)
    assert [g[EFFECTIVE_LR_KEY] for g in opt2.param_groups] == pytest.approx(
        [0.1 * opt.action_spec.lr_mult, 0.01 * opt.action_spec.lr_mult]
    )


def _used_lrs(opt, model, steps: int, nan_at: int | None = None) -> list[float]:
    used: list[float] = []
    handle = opt.optimizer.register_step_pre_hook(lambda base, *_: used.append(base.param_groups[0]["lr"]))
    for step in range(steps):
        _step(model, opt, step, scale=math.nan if step == nan_at else 1.0)
    handle.remove()
    return used


def test_warmup_ramps_the_lr_each_base_step_uses() -> None:
    model = make_net()
    opt = chuck.ChuckOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), "constant", model=model, warmup=4, history=False)
    assert opt.param_groups[0][EFFECTIVE_LR_KEY] == pytest.approx(0.025), "the key shows the first step's lr"
    assert _used_lrs(opt, model, 6) == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])
    assert opt.param_groups[0]["lr"] == 0.1, "the user's value stays in group['lr']"


def test_a_skipped_step_does_not_advance_the_warmup() -> None:
    model = make_net()
    no_recovery = chuck.GuardrailConfig(recovery_steps=0)  # the cut stays, so the arithmetic below is exact
    opt = chuck.ChuckOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), "constant", guardrails=no_recovery, model=model, warmup=4, history=False
    )
    # the NaN step is skipped by the guardrails (never reaching the base optimizer) and backs the lr off
    used = _used_lrs(opt, model, 4, nan_at=1)
    backoff = opt.action_spec.lr_mult
    assert backoff < 1.0
    assert used == pytest.approx([0.025, 0.05 * backoff, 0.075 * backoff])
    assert opt.param_groups[0][EFFECTIVE_LR_KEY] == pytest.approx(0.1 * backoff)


def test_warmup_resumes_mid_ramp_from_a_checkpoint() -> None:
    model = make_net()
    opt = chuck.ChuckOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), "constant", model=model, warmup=4, history=False)
    _used_lrs(opt, model, 2)
    state = opt.state_dict()
    model2 = make_net()
    opt2 = chuck.ChuckOptimizer(torch.optim.SGD(model2.parameters(), lr=0.1), "constant", model=model2, warmup=4, history=False)
    opt2.load_state_dict(state)
    assert opt2.param_groups[0][EFFECTIVE_LR_KEY] == pytest.approx(0.075)
    assert _used_lrs(opt2, model2, 3) == pytest.approx([0.075, 0.1, 0.1])


def test_warmup_comes_from_the_policy_and_bad_values_are_refused() -> None:
    model = make_net()
    opt = chuck.ChuckOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), "prior@10", model=model, history=False)
    assert opt.action_spec.warmup_steps == chuck.load_policy("prior@10").warmup > 0
    assert chuck.ChuckOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), history=False).action_spec.warmup_steps == 0
    with pytest.raises(ValueError, match="warmup must be >= 0"):
        chuck.ChuckOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model=model, warmup=-1, history=False)


def test_anneal_decays_the_lr_each_base_step_uses_over_the_end_of_a_known_budget() -> None:
    model = make_net()
    opt = chuck.ChuckOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), "constant", model=model, total_steps=10, anneal=0.4, history=False
    )
    assert (opt.action_spec.anneal_start, opt.action_spec.anneal_end) == (6, 10)
    # steps 0-5 at the lr, then 4/4, 3/4, 2/4, 1/4 of it; a step past the budget stays at the last factor
    assert _used_lrs(opt, model, 11) == pytest.approx([0.1] * 7 + [0.075, 0.05, 0.025, 0.025])
    assert opt.param_groups[0]["lr"] == 0.1, "the user's value stays in group['lr']"


class _Annealing(chuck.Policy):
    """Holds, and asks the optimizer to anneal over the last 30% of a known budget (``Policy.anneal``)."""

    name, anneal = "annealing", 0.3

    def act(self, observation):
        return [0.0, 0.0, 0.0, 0.0]


def test_anneal_needs_total_steps_resumes_from_a_checkpoint_and_refuses_bad_values() -> None:
    model = make_net()
    plain = chuck.ChuckOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), "constant", anneal=0.5, history=False)
    assert plain.action_spec.anneal_start is None, "no budget, nothing to anneal toward"

    def make(m):
        return chuck.ChuckOptimizer(
            torch.optim.SGD(m.parameters(), lr=0.1), "constant", model=m, total_steps=8, anneal=0.5, history=False
        )

    opt = make(model)
    _used_lrs(opt, model, 5)
    model2 = make_net()
    opt2 = make(model2)
    opt2.load_state_dict(opt.state_dict())
    assert opt2.param_groups[0][EFFECTIVE_LR_KEY] == pytest.approx(0.075)
    assert _used_lrs(opt2, model2, 3) == pytest.approx([0.075, 0.05, 0.025])
    own = chuck.ChuckOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), _Annealing(), total_steps=100, history=False)
    assert own.action_spec.anneal_start == 70, "the policy's own anneal"
    off = chuck.ChuckOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), _Annealing(), total_steps=100, anneal=0, history=False
    )
    assert off.action_spec.anneal_start is None, "anneal=0 turns the policy's off"
    with pytest.raises(ValueError, match="anneal must be a fraction"):
        chuck.ChuckOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), total_steps=8, anneal=1.5, history=False)


def test_warmup_and_anneal_multiply() -> None:
    model = make_net()
    opt = chuck.ChuckOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), "constant", model=model, total_steps=4, warmup=4, anneal=0.5, history=False
    )
    assert _used_lrs(opt, model, 4) == pytest.approx([0.025, 0.05, 0.075 * 1.0, 0.1 * 0.5])
