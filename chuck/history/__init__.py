"""Run history: one record per ChuckOptimizer run, stored as Parquet under ``$CHUCK_HOME/history``.

* :mod:`chuck.history.storage`: the files (atomic writes, defensive reads, the
  ``chuck history`` filters, the polars-missing notice);
* :mod:`chuck.history.records`: what a record holds and :func:`write_run_record`, the
  end-of-run entry point;
* :mod:`chuck.history.fingerprints`: what a run's task looks like;
* :mod:`chuck.history.warm_start`: starting hyperparameters from the nearest past runs.

Every public name is re-exported here, so ``from chuck.history import ...`` keeps working.
polars is imported only when a record is written or read.
"""

from chuck.history.fingerprints import OPTIMIZER_CLASSES, fingerprint, fingerprint_vector
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
from chuck.history.warm_start import Suggestion, learned_value, nearest_runs, suggest_hyperparameters

__all__ = [
    "OPTIMIZER_CLASSES",
    "RunRecord",
    "Suggestion",
    "build_run_record",
    "filter_history",
    "fingerprint",
    "fingerprint_vector",
    "history_dir",
    "learned_value",
    "nearest_runs",
    "read_history",
    "record_from_optimizer",
    "report_polars_missing_once",
    "schema_problem",
    "suggest_hyperparameters",
    "summarize_decisions",
    "summary_columns",
    "write_record",
    "write_run_record",
]
