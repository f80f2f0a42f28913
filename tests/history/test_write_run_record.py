"""``write_run_record``: the end-of-run entry point builds the record from plain data, so a
``weakref.finalize`` can write it after the optimizer is gone."""

from __future__ import annotations

import gc
import json
import math
import weakref

import pytest
import torch
import torch.nn.functional as F

import chuck
from chuck.history import fingerprint, read_history
from tests.conftest import batch, make_net


def _trained_run():
    model = make_net()
    base = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt = chuck.ChuckOptimizer(base, "heuristic", model=model, interval=5, history=False)
    for s in range(30):
        x, y = batch(s)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step(loss=loss)
        opt.zero_grad()
    return model, base, opt


def test_record_written_from_plain_data_after_the_optimizer_is_collected(tmp_path) -> None:
    from chuck.history import write_run_record

    model, base, opt = _trained_run()
    # everything the record needs, as plain data: nothing below refers to the ChuckOptimizer
    plain = dict(
        policy_id=opt.policy_id,
        fingerprint=fingerprint(model, base, batch_size=32),
        initial={"lr": 1e-3, "weight_decay": 0.01, "clip": math.inf},
        final={k: v for k, v in opt.hyperparameters.items() if not k.startswith("knob.")},
        outcome={"steps": 30, "final_train_loss": 0.7, "diverged": False},
        decisions=[d.as_dict() for d in opt.decisions],
        label="finalized",
        directory=tmp_path / "h",
    )
    n_decisions = len(opt.decisions)
    gone = weakref.ref(opt)
    weakref.finalize(opt, write_run_record, **plain)  # what the optimizer's finalizer does
    del opt
    gc.collect()
    assert gone() is None, "the finalizer's arguments must not keep the optimizer alive"
    df = read_history(tmp_path / "h")
    assert len(df) == 1
    row = df.row(0, named=True)
    assert row["label"] == "finalized" and row["policy_id"] == "heuristic@1"
    assert row["fp_optimizer"] == "AdamW" and row["fp_batch_size"] == 32 and row["outcome_steps"] == 30
    decisions = json.loads(row["decisions_json"])
    assert decisions["count"] == n_decisions == 6
    assert sum(decisions["by_source"].values()) == n_decisions


def test_write_run_record_accepts_decision_objects(tmp_path) -> None:
    from chuck.history import write_run_record

    model, base, opt = _trained_run()
    path = write_run_record(
        policy_id=opt.policy_id,
        fingerprint=fingerprint(model, base),
        initial={"lr": 1e-3},
        final={"lr": 2e-3, "lr_mult": 2.0},
        outcome={"steps": 30},
        decisions=list(opt.decisions),
        directory=tmp_path,
    )
    row = read_history(tmp_path).row(0, named=True)
    assert path is not None and path.exists()
    assert json.loads(row["decisions_json"])["count"] == len(opt.decisions)
    assert row["final_lr_mult"] == pytest.approx(2.0)
