"""Shared fixtures: small deterministic models and data."""

from __future__ import annotations

import pytest
import torch
from torch import nn


class FrozenNet(nn.Module):
    """MLP with a frozen first layer and a parameter that never gets a gradient."""

    def __init__(self, d_in: int = 8, width: int = 16, d_out: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        self.frozen = nn.Linear(d_in, width)
        self.frozen.requires_grad_(False)
        self.hidden = nn.Linear(width, width)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(width, d_out)
        self.unused = nn.Parameter(torch.zeros(4))  # requires grad, never receives one

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(self.act(self.hidden(torch.tanh(self.frozen(x))))))


def batch(step: int, n: int = 32, d_in: int = 8, d_out: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic batch for a given step, independent of any global RNG."""
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(n, d_in, generator=g)
    y = (x[:, :d_out] * torch.arange(1, d_out + 1)).argmax(dim=1)
    return x, y


def run_steps(model, opt, start: int, stop: int, *, loss_scale: float = 1.0, observe_every: int | None = None) -> None:
    """The ordinary training loop over ``batch(step)`` for steps [start, stop), loss passed to chuck."""
    import torch.nn.functional as F

    for step in range(start, stop):
        x, y = batch(step)
        loss = F.cross_entropy(model(x), y) * loss_scale
        loss.backward()
        opt.step(loss=loss)
        opt.zero_grad()
        if observe_every and step % observe_every == 0:
            with torch.no_grad():
                xv, yv = batch(10_000 + step)
                opt.observe(val_loss=F.cross_entropy(model(xv), yv))


def make_net(seed: int = 0, **kw) -> FrozenNet:
    torch.manual_seed(seed)
    return FrozenNet(**kw)


def logged_heuristic_run(logger):
    """The run the MLflow tests log: the frozen net from lr 1e-5 under the heuristic, clipping at
    0.5, a decision every 5 steps (lr raises, clipping and decisions of every source to show)."""
    import chuck

    model = make_net()
    opt = chuck.ChuckOptimizer(
        torch.optim.AdamW(model.parameters(), lr=1e-5),
        "heuristic",
        model=model,
        interval=5,
        max_grad_norm=0.5,
        tracking=logger,
        history=False,
    )
    return model, opt


@pytest.fixture
def net() -> FrozenNet:
    return make_net()


@pytest.fixture(autouse=True)
def _isolated_chuck_home(tmp_path, monkeypatch):
    """Every test gets its own CHUCK_HOME (history, Optuna DB, MLflow store): nothing leaks to ~/.chuck."""
    monkeypatch.setenv("CHUCK_HOME", str(tmp_path / "chuck_home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
