"""Run history: write on close/with/exit, read back, concurrent writers, corrupt files, nearest runs."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
import time
import uuid
from multiprocessing import get_context
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import chuck
from chuck.history import RunRecord, fingerprint, nearest_runs, read_history, suggest_hyperparameters, write_record
from tests.conftest import batch, make_net


def _train(opt, model, steps: int = 25) -> None:
    for s in range(steps):
        x, y = batch(s)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step(loss=loss)
        opt.zero_grad()
    opt.observe(val_loss=0.9)


def test_context_manager_writes_one_record() -> None:
    model = make_net()
    with chuck.ChuckOptimizer(
        torch.optim.AdamW(model.parameters(), lr=1e-3), "heuristic", model=model, label="unit", batch_size=32, data_size=1000
    ) as opt:
        _train(opt, model)
    opt.close()  # idempotent
    df = read_history()
    assert len(df) == 1
    row = df.row(0, named=True)
    assert row["label"] == "unit" and row["policy_id"] == "heuristic@1"
    assert row["fp_optimizer"] == "AdamW" and row["fp_batch_size"] == 32 and row["fp_data_size"] == 1000
    assert row["fp_param_count"] == sum(p.numel() for p in model.parameters())
    assert row["initial_lr"] == 1e-3 and row["outcome_steps"] == 25
    assert row["outcome_best_val_loss"] == pytest.approx(0.9)
    assert row["outcome_diverged"] is False
    assert Path(opt.history_path).exists()


def test_history_off_and_custom_directory(tmp_path) -> None:
    model = make_net()
    opt = chuck.ChuckOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), "constant", history=False)
    _train(opt, model)
    opt.close()
    assert len(read_history()) == 0
    opt = chuck.ChuckOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), "constant", history=str(tmp_path / "h"))
    _train(opt, model)
    opt.close()
    assert len(read_history(tmp_path / "h")) == 1


def test_interpreter_exit_writes_the_record(tmp_path) -> None:
    code = textwrap.dedent("""
        import torch, chuck
        m = torch.nn.Linear(4, 1)
        opt = chuck.ChuckOptimizer(torch.optim.SGD(m.parameters(), lr=0.1), "constant")
        for _ in range(5):
            loss = m(torch.randn(8, 4)).pow(2).mean(); loss.backward(); opt.step(loss=loss); opt.zero_grad()
        # no close(): the interpreter exit must write the record
    """)
    import os

    env = dict(os.environ, CHUCK_HOME=str(tmp_path / "home"))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    assert len(read_history(tmp_path / "home" / "history")) == 1


def _record(lr: float, fp: dict, loss: float = 0.5) -> RunRecord:
    return RunRecord(
        run_id=uuid.uuid4().hex,
        created=time.time(),
        policy_id="test",
        fingerprint=fp,
        initial={"lr": lr, "weight_decay": 0.0, "clip": math.inf},
        final={"lr": lr, "weight_decay": 0.01, "clip": math.inf},
        outcome={"initial_train_loss": 2.0, "best_val_loss": loss, "final_val_loss": loss, "diverged": False, "steps": 10},
    )


def _writer(args) -> int:
    directory, n, seed = args
    fp = fingerprint(nn.Linear(3, 3), None)
    for _ in range(n):
        write_record(_record(1e-3 * (seed + 1), fp), directory)
    return n


def test_concurrent_writers_lose_nothing(tmp_path) -> None:
    d = tmp_path / "shared"
    with get_context("spawn").Pool(4) as pool:
        written = sum(pool.map(_writer, [(str(d), 15, s) for s in range(4)]))
    df = read_history(d)
    assert written == 60 and len(df) == 60
    assert df["run_id"].n_unique() == 60
    assert not list(d.glob("*.tmp"))


def test_corrupt_file_is_reported_and_skipped(tmp_path) -> None:
    d = tmp_path / "h"
    fp = fingerprint(nn.Linear(3, 3), None)
    for _ in range(3):
        write_record(_record(1e-3, fp), d)
    (d / "run-20260101T000000-deadbeef.parquet").write_bytes(b"PAR1 this is not parquet")
    good = next(p for p in sorted(d.glob("run-*.parquet")) if "deadbeef" not in p.name)
    good.write_bytes(good.read_bytes()[:40])  # truncated
    with pytest.warns(RuntimeWarning, match="skipping unreadable record"):
        df = read_history(d)
    assert len(df) == 2


def test_nearest_fingerprint_and_suggestion() -> None:
    small_mlp = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
    big_cnn = nn.Sequential(nn.Conv2d(3, 64, 3), nn.ReLU(), nn.Conv2d(64, 128, 3), nn.ReLU(), nn.Flatten(), nn.Linear(128, 10))
    write_record(_record(3e-3, fingerprint(small_mlp, torch.optim.AdamW(small_mlp.parameters()), batch_size=32)))
    write_record(_record(1e-5, fingerprint(big_cnn, torch.optim.SGD(big_cnn.parameters(), lr=0.1), batch_size=256)))
    query = nn.Sequential(nn.Linear(10, 48), nn.ReLU(), nn.Linear(48, 2))
    opt = torch.optim.AdamW(query.parameters())
    near = nearest_runs(fingerprint(query, opt, batch_size=32), k=2)
    assert near[0][1]["fp_optimizer"] == "AdamW" and near[0][0] < near[1][0]
    s = suggest_hyperparameters(query, opt, batch_size=32, k=1)
    assert s.source == "history" and s.lr == pytest.approx(3e-3) and s.runs == [near[0][1]["run_id"]]
    assert s.distance == pytest.approx(near[0][0])


def test_no_history_means_no_suggestion() -> None:
    s = suggest_hyperparameters(nn.Linear(3, 1))
    assert s.source == "none" and s.lr is None and s.runs == []


def test_history_cli(capsys) -> None:
    from chuck.cli.main import main

    model = make_net()
    with chuck.ChuckOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-3), "constant", label="cli-run") as opt:
        _train(opt, model)
    assert main(["history", "--label", "cli-run"]) == 0
    out = capsys.readouterr().out
    assert "cli-run" in out and "AdamW" in out
    assert main(["history", "--optimizer", "SGD"]) == 0
    assert "no runs" in capsys.readouterr().out


def test_suggestion_repeats_the_start_not_the_users_schedule_nor_chucks_multiplier() -> None:
    """A run that started at 1e-3 under a cosine schedule (final lr ~0) while chuck's multiplier ended at 4
    suggests its start, 1e-3: neither the decayed lr nor where the multiplier ended (the outcome is the start's)."""
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
    opt = torch.optim.AdamW(model.parameters())
    rec = _record(1e-3, fingerprint(model, opt))
    rec.final = {"lr": 1e-9, "weight_decay": 0.04, "clip": math.inf, "lr_mult": 4.0, "wd_mult": 2.0}
    rec.initial = {"lr": 1e-3, "weight_decay": 0.02, "clip": math.inf}
    write_record(rec)
    s = suggest_hyperparameters(model, opt)
    assert s.lr == pytest.approx(1e-3) and s.weight_decay == pytest.approx(0.02)
