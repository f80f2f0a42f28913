"""chuck is a multiplier on top of whatever else writes the learning rate."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import chuck
from chuck.core.actions import ActionSpec
from tests.conftest import batch, make_net

SCHEDULERS = {
    "LambdaLR": lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda s: 1.0 / (1 + 0.05 * s)),
    "OneCycleLR": lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=200),
    "ReduceLROnPlateau": lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, patience=2, factor=0.5),
}


#: the lr factor of one full step down under the current action spec
DOWN = math.exp(-ActionSpec().steps[0])


def _run(name: str, wrap: bool, mult_action: float | None, steps: int = 120):
    model = make_net()
    base = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    opt = chuck.ChuckOptimizer(base, "constant", model=model) if wrap else base
    sched = SCHEDULERS[name](opt)
    if mult_action is not None:
        opt.apply_action([mult_action, 0.0, 0.0, 0.0])
    lrs, eff = [], []
    for step in range(steps):
        x, y = batch(step)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        lrs.append(opt.param_groups[0]["lr"])
        if wrap:
            eff.append(opt.hyperparameters["lr"])
            opt.step(loss=loss)
        else:
            opt.step()
        opt.zero_grad()
        if name == "ReduceLROnPlateau":
            sched.step(1.0)  # a flat metric: the scheduler keeps cutting the lr
        else:
            sched.step()
    return lrs, eff, model


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_multiplier_one_leaves_trajectory_unchanged(name: str) -> None:
    bare_lrs, _, bare_model = _run(name, wrap=False, mult_action=None)
    lrs, eff, model = _run(name, wrap=True, mult_action=None)
    assert lrs == bare_lrs
    assert eff == bare_lrs
    assert len(set(lrs)) > 2, "the scheduler should have moved the lr"
    for a, b in zip(bare_model.parameters(), model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_effective_lr_is_scheduler_times_multiplier(name: str) -> None:
    bare_lrs, _, _ = _run(name, wrap=False, mult_action=None)
    lrs, eff, _ = _run(name, wrap=True, mult_action=-1.0)  # one full step down
    assert lrs == bare_lrs  # the scheduler's own trajectory is untouched
    assert eff == pytest.approx([lr * DOWN for lr in bare_lrs], rel=1e-12)


def test_effective_lr_reaches_the_update() -> None:
    """Plain SGD: the applied update is exactly -(user lr x multiplier) x grad."""
    model = make_net()
    opt = chuck.ChuckOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), "constant")
    opt.apply_action([1.0, 0.0, 0.0, 0.0])  # one full step up
    x, y = batch(0)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    before = copy.deepcopy(model.hidden.weight.detach())
    grad = model.hidden.weight.grad.clone()
    opt.step(loss=loss)
    torch.testing.assert_close(model.hidden.weight.detach(), before - 0.1 / DOWN * grad)
    assert opt.param_groups[0]["lr"] == 0.1  # the user's value is back in the group


def test_rewriting_lr_every_update_is_respected() -> None:
    """Code that rewrites group['lr'] before every step (stable-baselines3 does) keeps working."""
    model = make_net()
    opt = chuck.ChuckOptimizer(torch.optim.SGD(model.parameters(), lr=1.0), "constant")
    opt.apply_action([-1.0, 0.0, 0.0, 0.0])
    for step in range(5):
        for g in opt.param_groups:
            g["lr"] = 0.01 * (step + 1)
        x, y = batch(step)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        assert opt.hyperparameters["lr"] == pytest.approx(0.01 * DOWN * (step + 1))
        opt.step(loss=loss)
        opt.zero_grad()
        assert opt.param_groups[0]["lr"] == 0.01 * (step + 1)
