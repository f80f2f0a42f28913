"""History storage under faults: foreign Parquet files, a full disk, polars missing."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import polars as pl
import pytest
from torch import nn

from chuck.history import RunRecord, fingerprint, read_history, suggest_hyperparameters, write_record
from tests.full_disk import full_disk  # noqa: F401 - fixture

MODEL = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))


def _record(lr: float = 3e-3) -> RunRecord:
    return RunRecord(
        run_id=uuid.uuid4().hex,
        created=time.time(),
        policy_id="test",
        fingerprint=fingerprint(MODEL, None),
        initial={"lr": lr, "weight_decay": 0.0, "clip": math.inf},
        final={"lr": lr, "weight_decay": 0.0, "clip": math.inf},
        outcome={"initial_train_loss": 2.0, "best_val_loss": 0.5, "diverged": False, "steps": 10},
    )


# Parquet files that read fine but are not chuck run records (another tool's output, an older or
# hand-edited schema). Before the fix each one made suggest_hyperparameters raise or silently
# turned every column into strings, so no run was usable.
FOREIGN = {
    "string-lr": {"run_id": ["x"], "created": [1.0], "policy_id": ["p"], "fp_param_count": [100], "final_lr": ["high"]},
    "string-fingerprint": {"run_id": ["x"], "created": [1.0], "policy_id": ["p"], "fp_param_count": ["big"], "final_lr": [0.1]},
    "list-column": {"run_id": ["x"], "created": [1.0], "policy_id": ["p"], "fp_depth": [[1, 2]], "final_lr": [0.1]},
    "all-strings": {"run_id": ["x"], "created": ["yesterday"], "fp_param_count": ["big"], "final_lr": ["high"]},
    "unrelated": {"a": [1, 2]},
}


@pytest.mark.parametrize("kind", sorted(FOREIGN))
def test_foreign_parquet_is_skipped_with_a_warning(tmp_path, kind) -> None:
    d = tmp_path / "h"
    good = write_record(_record(), d)
    pl.DataFrame(FOREIGN[kind]).write_parquet(d / "run-20260101T000000-foreign.parquet")
    with pytest.warns(RuntimeWarning, match="skipping .*run-20260101T000000-foreign.parquet"):
        df = read_history(d)
    assert df["run_id"].to_list() == [good.name.split("-")[-1].removesuffix(".parquet")]
    s = suggest_hyperparameters(MODEL, history=df)
    assert s.source == "history" and s.lr == pytest.approx(3e-3)


def test_history_cli_survives_a_foreign_file(capsys) -> None:
    from chuck.cli.main import main
    from chuck.history import history_dir

    write_record(_record())
    pl.DataFrame(FOREIGN["string-lr"]).write_parquet(history_dir() / "run-20260101T000000-foreign.parquet")
    with pytest.warns(RuntimeWarning, match="skipping"):
        assert main(["history"]) == 0
    assert "test" in capsys.readouterr().out


def test_full_disk_says_so_and_leaves_no_temporary_file(full_disk) -> None:
    d = full_disk / "history"
    d.mkdir(exist_ok=True)
    with pytest.raises(OSError, match="disk full"):
        write_record(_record(), d)
    assert list(d.iterdir()) == [], "no .run-*.tmp (or partial record) may be left behind"


def test_write_run_record_reports_a_full_disk(full_disk) -> None:
    from chuck.history import write_run_record

    rec = _record()
    with pytest.warns(RuntimeWarning, match="disk full"):
        path = write_run_record(
            policy_id=rec.policy_id,
            fingerprint=rec.fingerprint,
            initial=rec.initial,
            final=rec.final,
            outcome=rec.outcome,
            directory=full_disk,
        )
    assert path is None and sorted(p.name for p in full_disk.iterdir()) == ["filler"]


def _without_polars(code: str, home: Path) -> subprocess.CompletedProcess:
    # The injected fault: a core-only install, where `import polars` fails.
    prelude = "import sys; sys.modules['polars'] = None\n"
    env = dict(os.environ, CHUCK_HOME=str(home), PYTHONWARNINGS="default")
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=300
    )


def test_without_polars_history_says_so_once(tmp_path) -> None:
    proc = _without_polars(
        """
        from chuck.history import report_polars_missing_once, write_run_record
        for _ in range(3):
            assert write_run_record(policy_id="p", fingerprint={}, initial={}, final={}, outcome={}) is None
            report_polars_missing_once()
    """,
        tmp_path / "home",
    )
    assert proc.returncode == 0, proc.stderr
    messages = [ln for ln in proc.stderr.splitlines() if "Warning" in ln]
    assert len(messages) == 1 and "polars" in messages[0] and "pip install" in messages[0], proc.stderr
