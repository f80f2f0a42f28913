"""Out-of-distribution observations make ChuckOptimizer fall back and say why."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

import chuck
from chuck.policies.artifact import save_artifact
from chuck.policies.learned import ActorNetwork
from tests.conftest import batch, make_net


def _artifact(tmp_path, low, high):
    torch.manual_seed(0)
    spec = chuck.ObservationSpec()
    actor = ActorNetwork(len(spec.names), 4, [8])
    return save_artifact(
        actor,
        tmp_path / "p",
        {
            "name": "tiny",
            "version": "1",
            "interval": 10,
            "architecture": {"hidden": [8], "activation": "tanh"},
            "observation_stats": {"low": list(map(float, low)), "high": list(map(float, high))},
        },
    )


def _run(opt, model, lr_scale: float = 1.0, steps: int = 40):
    for s in range(steps):
        x, y = batch(s)
        loss = F.cross_entropy(model(x), y) * lr_scale
        loss.backward()
        opt.step(loss=loss)
        opt.zero_grad()


def test_in_range_observations_use_the_policy(tmp_path) -> None:
    spec = chuck.ObservationSpec()
    path = _artifact(tmp_path, spec.low, spec.high)  # trained on "everything": never OOD
    model = make_net()
    opt = chuck.ChuckOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-3), str(path), model=model)
    _run(opt, model)
    assert opt.decisions and all(d.source == "policy" for d in opt.decisions)


def test_engineered_out_of_range_run_falls_back(tmp_path) -> None:
    spec = chuck.ObservationSpec()
    low, high = spec.low.copy(), spec.high.copy()
    i = spec.names.index("ctrl.log10_lr")
    low[i], high[i] = -4.0, -2.0  # the policy only ever saw lrs in [1e-4, 1e-2]
    path = _artifact(tmp_path, low, high)
    for mode, needle in (("heuristic", "heuristic"), ("hold", "hold")):
        model = make_net()
        opt = chuck.ChuckOptimizer(torch.optim.SGD(model.parameters(), lr=3.0), str(path), model=model, ood_fallback=mode)
        _run(opt, model)
        d = opt.decisions[-1]
        assert d.source == "fallback" and "out of distribution (ctrl.log10_lr)" in d.reason and needle in d.reason
    policy = chuck.load_policy(str(path))
    obs = np.zeros(len(spec.names), dtype=np.float32)
    obs[i] = -3.0
    assert "ctrl.log10_lr" not in policy.out_of_distribution(obs)
