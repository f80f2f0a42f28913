"""A checkpoint carries the last ``CHECKPOINT_DECISIONS`` decisions, however long the run: its size is
bounded, and a resumed run's decision log holds exactly those."""

from __future__ import annotations

import io

import torch
import torch.nn.functional as F
from torch import nn

import chuck
from chuck.core.optimizer import CHECKPOINT_DECISIONS

DECISIONS = 3000
INTERVAL = 50  # the policy's own decisions, among the external one made after every step


def _run():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = chuck.ChuckOptimizer(
        torch.optim.AdamW(model.parameters(), lr=1e-3), "heuristic", model=model, interval=INTERVAL, history=False
    )
    opt.advise = False
    return model, opt


def test_a_checkpoint_holds_the_last_thousand_decisions_and_a_resumed_run_gets_them() -> None:
    assert CHECKPOINT_DECISIONS == 1000
    model, opt = _run()
    gen = torch.Generator().manual_seed(1)
    xs = torch.randn(16, 32, 8, generator=gen)
    ys = xs[..., :1].sin()
    step = 0
    while len(opt.decisions) < DECISIONS:
        loss = F.mse_loss(model(xs[step % 16]), ys[step % 16])
        loss.backward()
        opt.step(loss=loss)
        opt.zero_grad()
        step += 1
        if step % INTERVAL:  # a decision at every step: the policy's every INTERVAL steps, an external one between
            opt.apply_action([0.01 * (-1) ** step, 0.0, 0.0, 0.0], reason=f"external {step}")
    assert len(opt.decisions) == DECISIONS and opt.step_count == DECISIONS  # in memory: all of them (under max_decisions)

    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    records = saved["chuck"]["decisions"]
    assert len(records) == CHECKPOINT_DECISIONS
    expected = [d.as_dict() for d in opt.decisions[-CHECKPOINT_DECISIONS:]]
    assert [r["step"] for r in records] == [e["step"] for e in expected]
    assert records[-1]["step"] == DECISIONS and records[0]["step"] == DECISIONS - CHECKPOINT_DECISIONS + 1
    assert {r["source"] for r in records} == {"policy", "external"}

    resumed_model, resumed = _run()
    resumed_model.load_state_dict(model.state_dict())
    resumed.load_state_dict(saved)
    assert len(resumed.decisions) == CHECKPOINT_DECISIONS
    assert [d.step for d in resumed.decisions] == [e["step"] for e in expected]
    assert [d.reason for d in resumed.decisions] == [e["reason"] for e in expected]
    assert [d.hyperparameters for d in resumed.decisions] == [e["hyperparameters"] for e in expected]
