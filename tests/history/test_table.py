"""``chuck history``: a table that fits 100 columns, JSON and CSV for machines.

It used to print polars' repr: a shape line, a dtype row, about 210 characters wide, the
policy id wrapped over lines and steps as ``600.0``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
import uuid

import pytest
import torch
from torch import nn

from chuck.cli.main import main
from chuck.history import RunRecord, fingerprint, write_record
from chuck.history.table import format_table

BIG = nn.Sequential(nn.Linear(512, 2048), nn.GELU(), nn.Linear(2048, 2048), nn.GELU(), nn.Linear(2048, 10))
SMALL = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))


def _record(model, optimizer, *, label: str, policy: str, steps: int, outcome: dict) -> RunRecord:
    return RunRecord(
        run_id=uuid.uuid4().hex,
        created=time.time(),
        policy_id=policy,
        fingerprint=fingerprint(model, optimizer, batch_size=64),
        initial={"lr": 1e-5, "weight_decay": 0.01, "clip": math.inf},
        final={"lr": 3.16e-3, "weight_decay": 0.01, "clip": 1.5, "lr_mult": 316.0, "wd_mult": 1.0},
        outcome={"steps": steps, "initial_train_loss": 2.3, "diverged": False, **outcome},
        label=label,
    )


def _history() -> list[RunRecord]:
    recs = [
        _record(
            BIG,
            torch.optim.AdamW(BIG.parameters()),
            label="a label far longer than any column should be allowed to grow, from a sweep script",
            policy="chuck-default@prior-residual-0-5000-with-a-very-long-version-suffix",
            steps=600,
            outcome={"best_val_loss": 0.158, "final_val_loss": 0.159, "final_train_loss": 0.12},
        ),
        _record(
            SMALL,
            torch.optim.RMSprop(SMALL.parameters()),
            label="cli-run",
            policy="heuristic@1",
            steps=25,
            outcome={"best_val_loss": 0.62, "final_val_loss": 1.44, "final_train_loss": 1.3},
        ),
        _record(
            SMALL,
            torch.optim.SGD(SMALL.parameters(), lr=0.1),
            label="",
            policy="constant@1",
            steps=12,
            outcome={"diverged": True, "best_val_loss": math.nan, "final_val_loss": math.nan, "final_train_loss": math.inf},
        ),
    ]
    for r in recs:
        write_record(r)
    return recs


def test_history_table_fits_100_columns_and_reads_well(capsys) -> None:
    recs = _history()
    assert main(["history"]) == 0
    out = capsys.readouterr().out
    lines = out.rstrip("\n").splitlines()
    assert max(len(line) for line in lines) <= 100, "\n" + out
    assert len(lines) == 2 + len(recs), "a header, a rule and one line per run: no shape line, no dtype row"
    header = lines[0].split()
    for name in ("when", "label", "policy", "params", "optim", "lr", "end", "steps", "final", "loss", "outcome"):
        assert name in header, header
    body = "\n".join(lines[2:])
    assert "600.0" not in body and " 600 " in body, "steps as integers"
    assert "5.27M" in body and " 178 " in body, "parameter counts in k/M"
    assert "…" in body and "chuck-d" in body and "suffix" in body, "a long policy id is shortened in the middle"
    assert "heuristic@1" in body and "cli-run" in body, "short ones stay whole"
    assert {line.split()[-1] for line in lines[2:]} == {"ok", "collapsed", "diverged"}


def test_history_table_narrower_than_its_columns_drops_the_least_needed(capsys) -> None:
    _history()
    assert main(["history", "--width", "72"]) == 0
    lines = capsys.readouterr().out.rstrip("\n").splitlines()
    assert max(len(line) for line in lines) <= 72
    assert "outcome" in lines[0] and "lr end" in lines[0], "the outcome and the learned lr stay"


def test_history_json_and_csv_for_machines(capsys, tmp_path) -> None:
    recs = _history()
    assert main(["history", "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in runs] == [r.run_id for r in recs]
    assert [r["outcome"] for r in runs] == ["ok", "collapsed", "diverged"]
    assert runs[0]["outcome_steps"] == 600 and runs[0]["policy_id"] == recs[0].policy_id, "ids in full"
    assert runs[0]["initial_clip"] is None, "no NaN or Infinity in the JSON: non-finite numbers are null"
    assert runs[0]["decisions"] == {}, "the decision summary parsed, not a string inside a string"

    assert main(["history", "--csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["run_id"] for r in rows] == [r.run_id for r in recs] and rows[1]["outcome"] == "collapsed"

    path = tmp_path / "runs.json"
    assert main(["history", "--json", str(path), "--limit", "2"]) == 0
    assert len(json.loads(path.read_text())) == 2
    assert "wrote 2 runs" in capsys.readouterr().err


def test_empty_history_for_machines_is_empty_json(capsys) -> None:
    assert main(["history", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


@pytest.mark.parametrize("width", [100, 80, 60])
def test_format_table_respects_any_width(width) -> None:
    import polars as pl

    rows = [{"created": time.time(), "label": "x" * 200, "policy_id": "p" * 200, "fp_param_count": 10**9, "outcome_steps": 10}]
    lines = format_table(pl.DataFrame(rows), width=width).splitlines()
    assert max(len(line) for line in lines) <= width
