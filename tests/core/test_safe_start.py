"""The safe start (chuck/core/safe_start.py): it rescues an absurd starting lr, it changes nothing when
off, and a run resumed mid-ramp (or after the ramp stopped) is the uninterrupted run, bit for bit."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F

import chuck
from chuck.core.checkpoint import CheckpointError
from chuck.core.safe_start import SafeStartConfig
from tests.conftest import batch, make_net, run_steps

STEPS = 60


def _fresh(safe_start, lr: float = 10.0, seed: int = 0):
    model = make_net(seed)
    opt = chuck.ChuckOptimizer(
        torch.optim.AdamW(model.parameters(), lr=lr),
        "default",
        model=model,
        total_steps=STEPS,
        history=False,
        safe_start=safe_start,
    )
    opt.advise = False
    return model, opt


def _eval_loss(model) -> float:
    with torch.no_grad():
        x, y = batch(99_999, n=512)
        return float(F.cross_entropy(model(x), y))


def test_safe_start_rescues_an_absurd_lr() -> None:
    losses = {}
    for safe in (False, True):
        model, opt = _fresh(safe)
        run_steps(model, opt, 0, STEPS)
        losses[safe] = _eval_loss(model)
        if safe:
            assert opt.safe_start.stopped_at >= 0, "the ramp never stopped at AdamW lr 10: the test proves little"
            assert any(d.reason.startswith("safe_start:") for d in opt.decisions)
    assert math.isfinite(losses[True])
    assert losses[True] < losses[False]


def test_safe_start_off_is_todays_run() -> None:
    """``safe_start=False`` is the default policy's choice (``None``) and runs today's linear warm-up."""
    runs = []
    for safe in (None, False):
        model, opt = _fresh(safe, lr=1e-2)
        seen = []
        for step in range(STEPS):
            x, y = batch(step)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step(loss=loss)
            opt.zero_grad()
            seen.append(opt.action_spec.step_lr_mult)
        runs.append((model, opt, seen))
        assert opt.safe_start is None
        assert "safe_start" not in opt.state_dict()["chuck"]
        warm = opt.policy.warmup
        assert seen[:warm] == [(k + 1) / warm for k in range(warm)]  # the linear warm-up, exactly
    (m0, o0, s0), (m1, o1, s1) = runs
    for a, b in zip(m0.parameters(), m1.parameters()):
        assert torch.equal(a, b)
    assert s0 == s1 and [d.as_dict() for d in o0.decisions] == [d.as_dict() for d in o1.decisions]


def test_safe_start_ramp_is_geometric_under_the_warmup() -> None:
    """Geometric from 1e-3 where that is below the policy's linear warm-up, linear after; pure
    geometric under a policy without a warm-up."""
    _, opt = _fresh(SafeStartConfig(start=1e-3, steps=10))
    spec = opt.action_spec
    assert opt.policy.warmup == 20
    assert spec.warmup_factor(3) / spec.warmup_factor(2) == pytest.approx(1e3 ** (1 / 9))
    assert [spec.warmup_factor(k) for k in (0, 9, 19, 20)] == pytest.approx([1e-3, 0.5, 1.0, 1.0])
    model = make_net()
    opt = chuck.ChuckOptimizer(torch.optim.AdamW(model.parameters(), lr=1.0), "constant", history=False, safe_start=True)
    spec = opt.action_spec
    assert [spec.warmup_factor(k) for k in (0, 9, 10)] == pytest.approx([1e-3, 1.0, 1.0])


@pytest.mark.parametrize("stop_at", [6, 16])  # mid-ramp, before the blow-up; after the ramp stopped
def test_safe_start_resume_is_exact(stop_at: int) -> None:
    torch.manual_seed(5)
    ref_model, ref_opt = _fresh(True)
    run_steps(ref_model, ref_opt, 0, STEPS, observe_every=10)
    stopped = ref_opt.safe_start.stopped_at
    assert 6 < stopped < 16, f"the ramp stopped at {stopped}: the checkpoints no longer bracket it"

    torch.manual_seed(5)
    model, opt = _fresh(True)
    run_steps(model, opt, 0, stop_at, observe_every=10)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "rng": torch.get_rng_state()}, buf)
    del model, opt
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    model, opt = _fresh(True, seed=99)  # another init: everything must come from the checkpoint
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    torch.set_rng_state(ckpt["rng"])
    run_steps(model, opt, stop_at, STEPS, observe_every=10)

    for a, b in zip(ref_model.parameters(), model.parameters()):
        assert torch.equal(a, b)
    assert opt.safe_start.stopped_at == stopped
    assert [d.as_dict() for d in opt.decisions] == [d.as_dict() for d in ref_opt.decisions]
    assert opt.hyperparameters == ref_opt.hyperparameters


def test_safe_start_refuses_a_bad_checkpoint() -> None:
    model, opt = _fresh(True)
    run_steps(model, opt, 0, 4)
    sd = opt.state_dict()
    sd["chuck"]["safe_start"]["best_median"] = "low"
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(CheckpointError, match="safe_start"):
        opt.load_state_dict(sd)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
