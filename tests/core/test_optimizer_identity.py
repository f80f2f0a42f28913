"""ChuckOptimizer with the "constant" policy changes nothing: bit-identical to the bare optimizer."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import chuck
from tests.conftest import batch, make_net, run_steps

OPTIMIZERS = {
    "AdamW": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.05),
    "Adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "SGD-momentum": lambda p: torch.optim.SGD(p, lr=5e-2, momentum=0.9, weight_decay=1e-3),
    "RMSprop": lambda p: torch.optim.RMSprop(p, lr=1e-3),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_constant_policy_is_bit_identical(name: str) -> None:
    bare_model = make_net(dropout=0.0)
    chuck_model = copy.deepcopy(bare_model)
    bare = OPTIMIZERS[name](bare_model.parameters())
    wrapped = chuck.ChuckOptimizer(OPTIMIZERS[name](chuck_model.parameters()), policy="constant", model=chuck_model)

    for step in range(200):
        x, y = batch(step)
        for model, opt in ((bare_model, bare), (chuck_model, wrapped)):
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            if opt is wrapped:
                opt.step(loss=loss)
            else:
                opt.step()
            opt.zero_grad()

    for (n, a), (_, b) in zip(bare_model.named_parameters(), chuck_model.named_parameters()):
        assert torch.equal(a, b), f"{name}: parameter {n} differs"
    assert chuck_model.unused.grad is None
    assert wrapped.step_count == 200
    assert len(wrapped.decisions) == 200 // wrapped.interval  # it did decide, and held every time
    assert all(d.action == [0.0, 0.0, 0.0, 0.0] for d in wrapped.decisions)


def test_closure_form_matches_loss_form() -> None:
    m1 = make_net()
    m2 = copy.deepcopy(m1)
    o1 = chuck.ChuckOptimizer(torch.optim.SGD(m1.parameters(), lr=0.1), "heuristic", model=m1)
    o2 = chuck.ChuckOptimizer(torch.optim.SGD(m2.parameters(), lr=0.1), "heuristic", model=m2)
    for step in range(60):
        x, y = batch(step)
        loss = F.cross_entropy(m1(x), y)
        loss.backward()
        o1.step(loss=loss)
        o1.zero_grad()

        def closure(x=x, y=y):
            o2.zero_grad()
            out = F.cross_entropy(m2(x), y)
            out.backward()
            return out

        o2.step(closure)
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)
    assert [d.action for d in o1.decisions] == [d.action for d in o2.decisions]


def test_rejects_bad_arguments(net) -> None:
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        chuck.ChuckOptimizer(object(), "constant")
    with pytest.raises(chuck.PolicyLoadError, match="unknown policy"):
        chuck.ChuckOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "no-such-policy")
    with pytest.raises(ValueError, match="interval"):
        chuck.ChuckOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "constant", interval=1)
    with pytest.raises(ValueError, match="total_steps"):
        chuck.ChuckOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "constant", total_steps=0)
    for bad in ({"total_steps": 1.5}, {"total_steps": True}, {"interval": "10"}, {"interval": 2.5}, {"warmup": 0.5}):
        with pytest.raises(TypeError, match=f"{next(iter(bad))} must be a whole number of steps"):
            chuck.ChuckOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "constant", **bad)
    with pytest.raises(ValueError, match="interval must be >= 2"):
        chuck.ChuckOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "constant", interval=0)
    for whole in (100.0, np.int64(100)):  # a budget from arithmetic is taken as the count it is
        assert chuck.ChuckOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "constant", total_steps=whole).total_steps == 100
    with pytest.raises(TypeError, match="model must be the torch.nn.Module"):
        chuck.ChuckOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "constant", model=net.state_dict())
    opt = chuck.ChuckOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "constant")
    with pytest.raises(TypeError, match="already wrapped"):
        chuck.ChuckOptimizer(opt, "constant")
    with pytest.raises(ValueError, match=r"loss must be a scalar .* got a tensor of shape \(\d+,\)"):
        loss = F.cross_entropy(net(batch(0)[0]), batch(0)[1], reduction="none")
        loss.sum().backward()
        opt.step(loss=loss)


def test_observe_takes_numbers_and_says_what_else_it_got(net) -> None:
    opt = chuck.ChuckOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "constant", model=net, history=False)
    for bad, error, needle in (
        (torch.tensor([0.5, 0.6]), ValueError, r"val_loss must be one number .* shape \(2,\)"),
        ("0.5", TypeError, "val_loss must be a number, got str"),
        (True, TypeError, "val_loss must be a number, got bool"),
        (torch.tensor(0.5j), TypeError, "val_loss must be a real number"),
    ):
        with pytest.raises(error, match=needle):
            opt.observe(val_loss=bad)
    with pytest.raises(TypeError, match="accuracy must be a number"):
        opt.observe(val_loss=0.4, accuracy=[0.9])
    assert opt.metrics == {}  # a refused report changes nothing, its valid part included
    with pytest.raises(ValueError, match=r"val_loss must be one number .* an array of shape \(3,\)"):
        opt.observe(val_loss=np.ones(3))
    with pytest.raises(TypeError, match="val_loss must be a number, got complex"):
        opt.observe(val_loss=np.array(0.5j))
    opt.observe(val_loss=torch.tensor([[0.5]]), accuracy=np.float32(0.75), epoch=3, top5=np.array(0.25))
    assert opt.metrics == {"val_loss": 0.5, "accuracy": 0.75, "epoch": 3.0, "top5": 0.25}
    opt.observe(val_loss=np.array([0.125]))  # a one-element array, as metric code returns
    assert opt.metrics["val_loss"] == 0.125


def test_add_param_group_is_followed(net) -> None:
    head = torch.nn.Linear(3, 3)
    opt = chuck.ChuckOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "heuristic", model=net, interval=5)
    for step in range(60):
        x, y = batch(step)
        if step == 30:
            opt.add_param_group({"params": head.parameters()})
        loss = F.cross_entropy(head(net(x)) if step >= 30 else net(x), y)
        loss.backward()
        opt.step(loss=loss)
        opt.zero_grad()
    assert any(p is head.weight for p in opt.grad_monitor.ctx.params)
    # the sampled updates before the last decision cover the new head too (4 trainable net tensors + 2)
    assert len(opt.weight_monitor.update_ratios()) == 6
    assert opt.step_count == 60


def test_decisions_are_bounded(net) -> None:
    opt = chuck.ChuckOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "constant", model=net, interval=2, max_decisions=5)
    run_steps(net, opt, 0, 40)
    assert len(opt.decisions) == 5 and opt.decisions[-1].step == 40


@pytest.mark.parametrize(("total", "warned"), [(20, 1), (30, 0)])
def test_a_run_past_total_steps_is_said_once(net, total, warned) -> None:
    """total_steps is the end the policy plans for (its cooldown): a run that goes on past it says so once."""
    import warnings

    opt = chuck.ChuckOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "default", model=net, history=False, total_steps=total)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(30):
            x, y = batch(step)
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            opt.step(loss=loss)
            opt.zero_grad()
    said = [w for w in caught if "past total_steps" in str(w.message)]
    assert len(said) == warned
    if said:
        assert f"step {total + 1} is past total_steps={total}" in str(said[0].message)
        assert said[0].filename == __file__, "the warning points at the loop's opt.step"


@pytest.mark.parametrize("how", ["step()", "step(loss=...)", "record_loss", "step(closure)", "turned off"])
def test_a_loop_that_never_gives_the_loss_is_told_once(net, how) -> None:
    """Without the loss chuck's loss monitors, spike guardrail and the policy's loss inputs are blind
    (experiments/loss_blind.py: the default 1.44x worse); the first decision says so, once, at the
    loop's opt.step line. Every way of giving the loss keeps it quiet, and so does turning it off."""
    import warnings

    opt = chuck.ChuckOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "default", model=net, history=False, total_steps=60)
    opt.advise = how != "turned off"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(60):
            x, y = batch(step)

            def closure(x=x, y=y):
                opt.zero_grad()
                out = F.cross_entropy(net(x), y)
                out.backward()
                return out

            if how == "step(closure)":
                opt.step(closure)
                continue
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            if how == "record_loss":
                opt.record_loss(loss)
            opt.step(loss=loss) if how == "step(loss=...)" else opt.step()
            opt.zero_grad()
    said = [w for w in caught if "steps and no loss" in str(w.message)]
    assert len(opt.decisions) >= 3
    assert len(said) == (1 if how == "step()" else 0)
    if said:
        assert "20 steps and no loss" in str(said[0].message) and "opt.step(loss=loss)" in str(said[0].message)
        assert said[0].filename == __file__, "the warning points at the loop's opt.step"


def test_warnings_point_at_the_loop_for_a_closure_driven_optimizer_too(net) -> None:
    """LBFGS steps run through one more of chuck's frames; the warning still names the loop's line."""
    import warnings

    opt = chuck.ChuckOptimizer(torch.optim.LBFGS(net.parameters(), lr=0.1, max_iter=2), "constant", history=False, total_steps=3)
    x, y = batch(0)

    def closure():
        opt.zero_grad()
        out = F.cross_entropy(net(x), y)
        out.backward()
        return out

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(4):
            opt.step(closure)
    said = [w for w in caught if "past total_steps" in str(w.message)]
    assert len(said) == 1 and said[0].filename == __file__


def test_stepping_after_close_is_said_once(net) -> None:
    import warnings

    opt = chuck.ChuckOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "constant", model=net, history=False)
    run_steps(net, opt, 0, 3)
    opt.close()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_steps(net, opt, 3, 6)
    said = [w for w in caught if "step() after close()" in str(w.message)]
    assert len(said) == 1 and opt.step_count == 6
