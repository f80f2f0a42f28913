"""Save at step K, resume, continue to K+M: identical to an uninterrupted run, decisions included."""

from __future__ import annotations

import io

import torch

import chuck
from tests.conftest import make_net, run_steps

K, M = 70, 90


def _train(model, opt, start: int, stop: int) -> None:
    run_steps(model, opt, start, stop, observe_every=15)


def _fresh(seed_model: int = 0):
    model = make_net(seed_model, dropout=0.2)
    opt = chuck.ChuckOptimizer(
        torch.optim.AdamW(model.parameters(), lr=1e-5), "heuristic", model=model, total_steps=K + M, interval=10
    )
    opt.register_knob("augment", 0.5, 0.1, 1.0)
    return model, opt


def test_resume_is_bit_identical() -> None:
    torch.manual_seed(123)
    ref_model, ref_opt = _fresh()
    _train(ref_model, ref_opt, 0, K + M)

    torch.manual_seed(123)
    model, opt = _fresh()
    _train(model, opt, 0, K)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "rng": torch.get_rng_state()}, buf)
    del model, opt

    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)  # chuck's state must load without pickle
    model, opt = _fresh(seed_model=99)  # different init: everything must come from the checkpoint
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    torch.set_rng_state(ckpt["rng"])
    _train(model, opt, K, K + M)

    for a, b in zip(ref_model.parameters(), model.parameters()):
        assert torch.equal(a, b)
    assert [d.as_dict() for d in opt.decisions] == [d.as_dict() for d in ref_opt.decisions]
    assert opt.step_count == ref_opt.step_count == K + M
    assert opt.hyperparameters == ref_opt.hyperparameters
    assert any(d.action != [0.0] * 4 for d in opt.decisions), "the heuristic never acted: the test proves little"


def test_bare_checkpoint_warns_and_starts_fresh(net) -> None:
    bare = torch.optim.SGD(net.parameters(), lr=0.1)
    opt = chuck.ChuckOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "constant")
    import pytest

    with pytest.warns(RuntimeWarning, match="no 'chuck' entry"):
        opt.load_state_dict(bare.state_dict())
