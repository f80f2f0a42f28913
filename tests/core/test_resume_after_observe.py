"""A run saved at any step, right after ``observe()`` included, resumes bit-identically.

``observe(val_loss=...)`` leaves a vote for the next step (keep these weights as the best, or put the
best weights back); a checkpoint taken between the two must carry it, or the resumed run skips what
the uninterrupted one does at its next step.
"""

from __future__ import annotations

import io

import torch
import torch.nn.functional as F

import chuck
from tests.conftest import batch, make_net

STEPS = 65
OBSERVE_EVERY = 10
#: Validation losses, one per evaluation: five new bests (each asks for a snapshot of the best
#: weights), then a rise far beyond their noise (asks for the best weights back at the next step).
VAL_LOSSES = [2.0, 1.6, 1.3, 1.1, 1.0, 2.5]


def _fresh(seed: int):
    model = make_net(seed, dropout=0.2)
    opt = chuck.ChuckOptimizer(
        torch.optim.AdamW(model.parameters(), lr=1e-3), "default", model=model, total_steps=STEPS, history=False
    )
    opt.advise = False
    return model, opt


def _step(model, opt, step: int) -> None:
    x, y = batch(step)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step(loss=loss)
    opt.zero_grad()
    if (step + 1) % OBSERVE_EVERY == 0:
        opt.observe(val_loss=VAL_LOSSES[step // OBSERVE_EVERY])


def _save(model, opt) -> bytes:
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "rng": torch.get_rng_state()}, buf)
    return buf.getvalue()


def test_resuming_from_every_step_is_bit_identical() -> None:
    torch.manual_seed(7)
    model, opt = _fresh(0)
    saves = []
    for step in range(STEPS):
        _step(model, opt, step)
        saves.append(_save(model, opt))  # after observe() on evaluation steps: its vote is pending
    actions = [d.reason for d in opt.decisions if d.source == "guardrail"]
    assert any("rollback_overfit" in r for r in actions), f"the rise never rolled back: the test proves little ({actions})"
    assert opt.guardrails is not None and opt.guardrails.best.exists

    for saved_at, blob in enumerate(saves):
        ckpt = torch.load(io.BytesIO(blob), weights_only=True)
        resumed_model, resumed = _fresh(seed=99)  # another init: everything must come from the checkpoint
        resumed_model.load_state_dict(ckpt["model"])
        resumed.load_state_dict(ckpt["opt"])
        torch.set_rng_state(ckpt["rng"])
        for step in range(saved_at + 1, STEPS):
            _step(resumed_model, resumed, step)
        where = f"resumed after step {saved_at}"
        for (name, a), b in zip(model.named_parameters(), resumed_model.parameters()):
            assert torch.equal(a, b), f"{where}: {name} differs from the uninterrupted run"
        assert resumed.step_count == opt.step_count, where
        assert resumed.hyperparameters == opt.hyperparameters, where
        assert [(d.step, d.source, d.reason) for d in resumed.decisions] == [(d.step, d.source, d.reason) for d in opt.decisions]
