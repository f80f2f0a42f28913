"""A run's record says the lr it started from and the lr it used most; warm starts repeat the start.

A run whose lr was annealed 100x at the end (chuck's cooldown) used to seed ``chuck tune`` with the
end of that anneal: its initial lr times the multiplier it ended on.
"""

from __future__ import annotations

import math
import time
import uuid

import pytest
import torch
import torch.nn.functional as F

import chuck
from chuck.core.run_record import LrTrail
from chuck.history import RunRecord, fingerprint, read_history, start_value, suggest_hyperparameters, write_record
from chuck.tuning.cold_start import _warm_start_params
from tests.conftest import batch, make_net

START_LR = 1e-3
RANGES = {"lr_range": (1e-6, 1.0), "wd_range": (1e-6, 1e-1), "clip_range": (0.1, 100.0), "eps_range": None}


def _annealed_run(steps: int = 60, anneal_from: int = 40) -> tuple[torch.nn.Module, dict]:
    """A run from lr 1e-3 whose lr multiplier is cut 100x (and more) over its last steps, as a cooldown does."""
    model = make_net()
    opt = chuck.ChuckOptimizer(torch.optim.AdamW(model.parameters(), lr=START_LR), "constant", model=model, interval=5)
    for s in range(steps):
        x, y = batch(s)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step(loss=loss)
        opt.zero_grad()
        if s >= anneal_from and opt.action_spec.lr_mult > 0.01:
            opt.apply_action([-1.0, 0.0, 0.0, 0.0], source="external", reason="cooldown")
    assert opt.action_spec.lr_mult <= 0.01, "the run ends at a hundredth of its lr, or less"
    opt.close()
    rows = list(read_history().iter_rows(named=True))
    assert len(rows) == 1
    return model, rows[0]


def test_a_run_annealed_100x_records_the_lr_it_started_from_and_the_lr_it_used_most() -> None:
    _, row = _annealed_run()
    assert row["final_lr"] <= START_LR / 100
    assert row["lr_start"] == pytest.approx(START_LR)
    # 40 of 60 steps ran at 1e-3: the median is the plateau, not the cooldown
    assert row["lr_median"] == pytest.approx(START_LR)
    assert start_value(row, "lr") == pytest.approx(START_LR)


def test_the_warm_start_proposes_the_starting_lr_not_the_end_of_the_cooldown() -> None:
    model, _ = _annealed_run()
    s = suggest_hyperparameters(model, torch.optim.AdamW(model.parameters()))
    assert s.lr == pytest.approx(START_LR), s.basis
    assert "starting lr 0.001" in s.basis and "repeating what they started with" in s.basis
    trials, _ = _warm_start_params(model, "AdamW", 3, *RANGES.values())
    assert [t["lr"] for t in trials] == [pytest.approx(START_LR)], "one run: one trial, at its start"


def _record(model: torch.nn.Module, *, lr: dict | None, initial_lr: float, weight_decay: float = 0.01) -> None:
    write_record(
        RunRecord(
            run_id=uuid.uuid4().hex,
            created=time.time(),
            policy_id="default@1",
            fingerprint=fingerprint(model, None) | {"optimizer": "AdamW"},
            initial={"lr": initial_lr, "weight_decay": weight_decay, "clip": math.inf},
            final={"lr": initial_lr / 100, "weight_decay": weight_decay, "clip": math.inf, "lr_mult": 0.01, "wd_mult": 1.0},
            outcome={"initial_train_loss": 1.1, "best_val_loss": 0.5, "final_val_loss": 0.5, "steps": 100, "diverged": False},
            lr=lr or {},
        )
    )


def test_identical_warm_start_trials_are_enqueued_once() -> None:
    """Two runs that started alike (weight decays equal to the digits a trial prints) seed one trial."""
    model = make_net()
    _record(model, lr={"start": 3e-3, "median": 3e-3}, initial_lr=3e-3, weight_decay=0.0100001)
    _record(model, lr={"start": 3e-3, "median": 2e-3}, initial_lr=3e-3, weight_decay=0.0100002)
    trials, suggestion = _warm_start_params(model, "AdamW", 3, *RANGES.values())
    assert suggestion.lr == pytest.approx(3e-3)
    assert len(trials) == 1 and trials[0]["lr"] == pytest.approx(3e-3)
    assert trials[0]["weight_decay"] == pytest.approx(0.01, rel=1e-4)


def test_a_record_from_before_lr_start_falls_back_to_its_initial_lr() -> None:
    model = make_net()
    _record(model, lr=None, initial_lr=2e-3)
    row = next(read_history().iter_rows(named=True))
    assert "lr_start" not in row
    assert start_value(row, "lr") == pytest.approx(2e-3)
    trials, _ = _warm_start_params(model, "AdamW", 3, *RANGES.values())
    assert [t["lr"] for t in trials] == [pytest.approx(2e-3)]


class _Run:
    """What LrTrail reads from a ChuckOptimizer: param group 0's lr, the step count, the step's multiplier."""

    def __init__(self, lr: float) -> None:
        self.optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
        self.step_count = 0
        self.action_spec = type("Spec", (), {"step_lr_mult": 1.0})()


def test_the_median_lr_ignores_a_warm_up_and_a_cooldown_over_a_minority_of_steps() -> None:
    trail, run = LrTrail(), _Run(0.1)
    schedule = [(k + 1) / 10 for k in range(10)] + [1.0] * 70 + [1.0 - k / 20 for k in range(20)]
    for mult in schedule:
        run.step_count += 1
        run.action_spec.step_lr_mult = mult
        trail(run)
    trail(run)  # a skipped step (the count did not move) counts nothing
    assert trail.start == 0.1
    assert trail.median() == pytest.approx(0.1)
    log_mean = sum(math.log10(0.1 * m) for m in schedule) / len(schedule)
    assert 10**log_mean < 0.09, "a geometric mean would have been pulled down by the warm-up and the cooldown"
