"""``Decision.changed``: what a decision moved, as data (hyperparameter -> (before, after))."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import chuck
from chuck.core.report import Decision
from tests.conftest import batch, make_net, run_steps


def test_policy_decisions_carry_each_moved_hyperparameter_before_and_after() -> None:
    model = make_net()
    opt = chuck.ChuckOptimizer(
        torch.optim.AdamW(model.parameters(), lr=1e-5), "heuristic", model=model, interval=5, history=False
    )
    run_steps(model, opt, 0, 40)
    decided = [d for d in opt.decisions if d.source != "guardrail"]
    assert any(d.changed for d in decided), "the heuristic raises a lr of 1e-5"
    previous = None
    for d in decided:
        for name, (before, after) in d.changed.items():
            assert after == d.hyperparameters[name]
            assert before != after
            if previous is not None and name in ("lr", "weight_decay", "clip"):
                assert before == previous.hyperparameters[name]  # no scheduler: the values before are the last ones after
        unchanged = set(d.hyperparameters) - set(d.changed) - {"lr_mult", "wd_mult"}
        if previous is not None:
            for name in unchanged & {"lr", "weight_decay"}:
                assert d.hyperparameters[name] == previous.hyperparameters[name]
        previous = d
    held = [d for d in decided if not any(abs(a) > 0 for a in d.action)]
    assert all(d.changed == {} for d in held)


def test_a_guardrail_cut_records_the_lr_before_and_after() -> None:
    model = make_net()
    opt = chuck.ChuckOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-3), "heuristic", model=model, history=False)
    run_steps(model, opt, 0, 10)
    lr_before = opt.hyperparameters["lr"]
    x, y = batch(10)
    loss = F.cross_entropy(model(x), y) * math.nan  # non-finite: the step is skipped and the lr cut
    loss.backward()
    opt.step(loss=loss)
    opt.zero_grad()
    cut = opt.decisions[-1]
    assert cut.source == "guardrail"
    before, after = cut.changed["lr"]
    assert math.isclose(before, lr_before, rel_tol=1e-12)
    assert after == opt.hyperparameters["lr"] < lr_before


def test_a_skip_without_a_cut_records_no_change() -> None:
    model = make_net()
    opt = chuck.ChuckOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-3), "heuristic", model=model, history=False)
    run_steps(model, opt, 0, 10)
    x, y = batch(10)
    loss = F.cross_entropy(model(x), y) * math.nan
    loss.backward()
    opt.step(loss=loss)
    opt.zero_grad()
    run_steps(model, opt, 11, 60)  # healthy steps repay the cut: the multiplier only rises meanwhile
    opt.controller.record("guardrail", [], "a skip that cut nothing", opt.step_count)
    assert opt.decisions[-1].changed == {}


def test_decision_records_without_changed_still_load() -> None:
    """Checkpoints and JSON written before ``changed`` existed load, with nothing recorded as changed."""
    old = {
        "step": 20,
        "source": "policy",
        "action": [0.5, 0.0, 0.0, 0.0],
        "observation": {},
        "hyperparameters": {"lr": 1e-3},
        "reason": "lr x2",
        "attribution": {},
        "policy_id": "heuristic@1",
    }
    assert Decision.from_dict(old).changed == {}
    d = Decision.from_dict({**old, "changed": {"lr": [5e-4, 1e-3]}})  # as JSON gives it back
    assert d.changed == {"lr": (5e-4, 1e-3)}
    assert Decision.from_dict(d.as_dict()) == d


def test_changed_survives_a_checkpoint() -> None:
    model = make_net()
    opt = chuck.ChuckOptimizer(
        torch.optim.AdamW(model.parameters(), lr=1e-5), "heuristic", model=model, interval=5, history=False
    )
    run_steps(model, opt, 0, 30)
    state = opt.state_dict()
    torch.save(state, buf := __import__("io").BytesIO())
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    other = chuck.ChuckOptimizer(
        torch.optim.AdamW(model.parameters(), lr=1e-5), "heuristic", model=model, interval=5, history=False
    )
    other.load_state_dict(loaded)
    assert [d.changed for d in other.decisions] == [d.changed for d in opt.decisions]
    assert any(d.changed for d in other.decisions)
