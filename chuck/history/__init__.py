"""Run history: one record per ChuckOptimizer run, stored as Parquet under ``$CHUCK_HOME/history``.

* :mod:`chuck.history.storage`: the files (atomic writes, defensive reads, the
  ``chuck history`` filters, the polars-missing notice);
* :mod:`chuck.history.records`: what a record holds and :func:`write_run_record`, the
  end-of-run entry point;
* :mod:`chuck.history.fingerprints`: what a run's task looks like;
* :mod:`chuck.history.outcomes`: how a recorded run ended (ok, diverged, collapsed);
* :mod:`chuck.history.warm_start`: starting hyperparameters from the nearest past runs
  that ended well, and what a suggestion rests on;
* :mod:`chuck.history.table`: the ``chuck history`` table, JSON and CSV.

Every public name is re-exported here, so ``from chuck.history import ...`` keeps working.
They load on first use (PEP 562): ``chuck history`` reads and prints records without
importing torch (only fingerprints and warm starts, which look at a model, need it), and
polars is imported only when a record is written or read.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chuck.history.fingerprints import OPTIMIZER_CLASSES, fingerprint, fingerprint_vector
    from chuck.history.outcomes import COLLAPSE_FACTOR, RunOutcome, classify_run
    from chuck.history.records import (
        RunRecord,
        build_run_record,
        record_from_optimizer,
        summarize_decisions,
        write_record,
        write_run_record,
    )
    from chuck.history.storage import (
        filter_history,
        history_dir,
        read_history,
        report_polars_missing_once,
        schema_problem,
        summary_columns,
    )
    from chuck.history.warm_start import (
        RankedRun,
        Suggestion,
        learned_value,
        nearest_runs,
        rank_runs,
        start_value,
        suggest_from_fingerprint,
        suggest_hyperparameters,
    )

_MODULES = {
    "fingerprints": ("OPTIMIZER_CLASSES", "fingerprint", "fingerprint_vector"),
    "outcomes": ("COLLAPSE_FACTOR", "RunOutcome", "classify_run"),
    "records": (
        "RunRecord",
        "build_run_record",
        "record_from_optimizer",
        "summarize_decisions",
        "write_record",
        "write_run_record",
    ),
    "storage": (
        "filter_history",
        "history_dir",
        "read_history",
        "report_polars_missing_once",
        "schema_problem",
        "summary_columns",
    ),
    "warm_start": (
        "RankedRun",
        "Suggestion",
        "learned_value",
        "nearest_runs",
        "rank_runs",
        "start_value",
        "suggest_from_fingerprint",
        "suggest_hyperparameters",
    ),
}
_LAZY = {name: f"{__name__}.{module}" for module, names in _MODULES.items() for name in names}


def __getattr__(name: str) -> Any:
    """Load a public name from its module on first access, then cache it."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "COLLAPSE_FACTOR",
    "OPTIMIZER_CLASSES",
    "RankedRun",
    "RunOutcome",
    "RunRecord",
    "Suggestion",
    "build_run_record",
    "classify_run",
    "filter_history",
    "fingerprint",
    "fingerprint_vector",
    "history_dir",
    "learned_value",
    "nearest_runs",
    "rank_runs",
    "read_history",
    "record_from_optimizer",
    "report_polars_missing_once",
    "schema_problem",
    "start_value",
    "suggest_from_fingerprint",
    "suggest_hyperparameters",
    "summarize_decisions",
    "summary_columns",
    "write_record",
    "write_run_record",
]
assert set(__all__) == set(_LAZY)
