"""Where run records live: one Parquet file per run under ``$CHUCK_HOME/history``.

Every run writes exactly one file, ``run-<utc time>-<uuid>.parquet``: serialized in
memory, written to a temporary name and renamed into place (atomic on POSIX).
Concurrent writers from many processes therefore never touch the same file and
nothing is lost; readers see either a whole record or none. A full disk removes the
temporary file and says "disk full" (polars' own message for a short write is
"Invalid thrift: transport error").

Reading is defensive: a file that cannot be read (truncated, corrupt) or that reads
but is not a chuck run record (a foreign or hand-edited schema: missing columns,
strings where numbers belong, nested columns) is reported with a warning and
skipped, never fatal.

polars is imported only here, when a record is written or read; without it,
:func:`report_polars_missing_once` says so once per process.
The ``chuck history`` filters live here too.
"""

from __future__ import annotations

import errno
import io
import os
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chuck.core.home import chuck_home

_polars_reported = False
_polars_lock = threading.Lock()

#: Columns every record has, and the polars dtype family each must have.
REQUIRED = {"run_id": "string", "created": "numeric", "policy_id": "string"}
#: Text columns; every other column of a known prefix is numeric (outcome_ may also be boolean or text).
TEXT_COLUMNS = {"label", "decisions_json", "fp_optimizer", "fp_normalization", "fp_loss_kind"}
#: Outcome fields that later code does arithmetic or truth tests on.
NUMERIC_OUTCOMES = {
    "outcome_initial_train_loss",
    "outcome_final_train_loss",
    "outcome_best_val_loss",
    "outcome_final_val_loss",
    "outcome_steps",
    "outcome_skips",
    "outcome_rollbacks",
    "outcome_overfit_rollbacks",
    "outcome_restarts",
}


def polars() -> Any:
    """The polars module, or ModuleNotFoundError with the install hint when it is not installed (any other
    ImportError, such as a half-imported polars, is raised as it is: it is not a missing install)."""
    try:
        import polars as pl
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError("chuck's run history needs polars: pip install 'chuck[all]'", name="polars") from exc
    return pl


def report_polars_missing_once() -> None:
    """Warn, at most once per process, that the run history is off because polars is missing.

    A core-only install (torch, numpy, gymnasium) used to warn at every interpreter exit
    and for every run; one clear line is enough.
    """
    global _polars_reported
    with _polars_lock:
        if _polars_reported:
            return
        _polars_reported = True
    warnings.warn(
        "chuck: run history is off in this process: it needs polars (pip install 'chuck[all]')", RuntimeWarning, stacklevel=2
    )


def history_dir() -> Path:
    d = chuck_home() / "history"
    d.mkdir(parents=True, exist_ok=True)
    return d


def write_rows(row: dict[str, Any], created: float, run_id: str, directory: str | Path | None = None) -> Path:
    """Write one record row atomically; returns its path. OSError ``disk full`` when out of space."""
    pl = polars()
    d = Path(directory) if directory else history_dir()
    d.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(created))
    path = d / f"run-{stamp}-{run_id}.parquet"
    tmp = d / f".{path.name}.{os.getpid()}.tmp"
    buf = io.BytesIO()
    pl.DataFrame([row]).write_parquet(buf)  # in memory: a failed write below is an OSError, not bad thrift
    try:
        with open(tmp, "wb") as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())  # a delayed ENOSPC (network or quota file systems) surfaces here
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(exc.errno, f"disk full: no room for the run record in {d}") from None
        raise
    return path


def _family(dtype: Any, pl: Any) -> str:
    if dtype == pl.Null:
        return "null"
    if dtype == pl.Boolean:
        return "boolean"
    if dtype.is_numeric():
        return "numeric"
    if dtype in (pl.String, pl.Categorical):
        return "string"
    return "other"


def schema_problem(frame: Any) -> str | None:
    """Why ``frame`` is not a chuck run record (None if it is one)."""
    pl = polars()
    fam = {c: _family(t, pl) for c, t in frame.schema.items()}
    for col, want in REQUIRED.items():
        if fam.get(col) != want:
            return f"column {col!r} is {'missing' if col not in fam else frame.schema[col]}, expected {want}"
    for col, f in fam.items():
        if f == "null":  # a column with no values in this file (an unknown batch size...)
            continue
        if f == "other":
            return f"column {col!r} has type {frame.schema[col]}"
        if col in TEXT_COLUMNS:
            ok = f == "string"
        elif col == "outcome_diverged":
            ok = f == "boolean"
        elif col.startswith("outcome_") and col not in NUMERIC_OUTCOMES:
            ok = True
        elif col.startswith(("fp_", "initial_", "final_", "outcome_", "lr_")):
            ok = f == "numeric"
        else:
            ok = True  # a column from a newer chuck: kept, never used
        if not ok:
            return f"column {col!r} has type {frame.schema[col]}"
    return None


def read_history(directory: str | Path | None = None) -> Any:
    """All records as one polars DataFrame (empty if none). Unreadable or foreign files are warned about and skipped."""
    pl = polars()
    d = Path(directory) if directory else history_dir()
    frames = []
    for path in sorted(d.glob("run-*.parquet")):
        try:
            frame = pl.read_parquet(path)
        except Exception as exc:  # noqa: BLE001 - corrupt or truncated file
            warnings.warn(
                f"chuck history: skipping unreadable record {path.name} ({type(exc).__name__}: {exc})",
                RuntimeWarning,
                stacklevel=2,
            )
            continue
        problem = schema_problem(frame)
        if problem is not None:
            warnings.warn(
                f"chuck history: skipping {path.name}: not a chuck run record ({problem})", RuntimeWarning, stacklevel=2
            )
            continue
        frames.append(frame)
    if not frames:
        return pl.DataFrame()
    return pl.concat(frames, how="diagonal_relaxed").sort("created")


def filter_history(
    df: Any,
    *,
    optimizer: str | None = None,
    policy: str | None = None,
    label: str | None = None,
    min_params: int | None = None,
    max_params: int | None = None,
    limit: int | None = None,
) -> Any:
    """Filter a history frame (the ``chuck history`` options)."""
    pl = polars()
    if len(df) == 0:
        return df
    if optimizer:
        df = df.filter(pl.col("fp_optimizer") == optimizer)
    if policy:
        df = df.filter(pl.col("policy_id").str.contains(policy, literal=True))
    if label:
        df = df.filter(pl.col("label").str.contains(label, literal=True))
    if min_params is not None:
        df = df.filter(pl.col("fp_param_count") >= min_params)
    if max_params is not None:
        df = df.filter(pl.col("fp_param_count") <= max_params)
    if limit:
        df = df.tail(limit)
    return df


def summary_columns(df: Any) -> Sequence[str]:
    """The columns ``chuck history`` shows, those present in ``df``."""
    wanted = [
        "created",
        "label",
        "policy_id",
        "fp_param_count",
        "fp_optimizer",
        "lr_start",
        "initial_lr",
        "lr_median",
        "final_lr",
        "outcome_steps",
        "outcome_best_val_loss",
        "outcome_final_train_loss",
        "outcome_diverged",
    ]
    return [c for c in wanted if c in df.columns]
