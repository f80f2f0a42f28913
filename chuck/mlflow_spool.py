"""The MLflow logger's on-disk spool: metrics waiting to be sent and the decision table.

Two files per run under the spool directory:

* ``<run_id>.jsonl``: metric records ``[key, value, timestamp_ms, step]`` not yet accepted
  by MLflow, rewritten atomically (temporary file, then rename) on every flush;
* ``<run_id>.decisions.jsonl``: one decision per line, appended as decisions come. The
  table is built from it at ``close()`` (``chuck/decisions.json`` and ``.csv``), so
  memory does not grow with the number of decisions (faults issue, item 14: an
  in-memory list reached +433 MiB at 12k decisions), and it survives a server that is
  down at ``close()``.

Every write reports failure (a full disk, a read-only directory) by returning False
instead of raising: the spool is a safety net, and the logger keeps sending without
it (faults issue, item 13). :func:`replay_spool` sends both files of a run later.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

Record = tuple[str, float, int, int]


class Spool:
    """The spool files of one run in ``directory``."""

    def __init__(self, directory: str | Path, run_id: str) -> None:
        self.directory = Path(directory)
        self.metrics_path = self.directory / f"{run_id}.jsonl"
        self.table_path = self.directory / f"{run_id}.decisions.jsonl"
        self.last_error: OSError | None = None  # why the last write failed

    # -- metrics -----------------------------------------------------------
    def read_metrics(self) -> list[Record]:
        return read_metric_file(self.metrics_path)

    def write_metrics(self, records: list[Record]) -> bool:
        """Replace the metric spool with ``records`` atomically; False if it could not be written."""
        tmp = self.metrics_path.with_suffix(".tmp")
        try:
            with open(tmp, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in records)
            os.replace(tmp, self.metrics_path)
            return True
        except OSError as exc:
            self.last_error = exc
            _unlink(tmp)
            return False

    def clear_metrics(self) -> None:
        _unlink(self.metrics_path)

    # -- decision table ----------------------------------------------------
    def append_decisions(self, rows: list[dict[str, Any]]) -> bool:
        """Append decision rows; False if they could not all be written. A failed append is cut
        back to the previous end of file, so a torn line cannot swallow the rows after it."""
        if not rows:
            return True
        try:
            size = self.table_path.stat().st_size if self.table_path.exists() else 0
        except OSError as exc:
            self.last_error = exc
            return False
        try:
            with open(self.table_path, "a") as f:
                f.write("".join(json.dumps(r, default=float) + "\n" for r in rows))
            return True
        except OSError as exc:
            self.last_error = exc
            try:
                os.truncate(self.table_path, size)
            except OSError:
                pass
            return False

    def read_decisions(self) -> Iterator[dict[str, Any]]:
        """Spooled decision rows, streamed from disk."""
        yield from read_table_file(self.table_path)

    def clear_decisions(self) -> None:
        _unlink(self.table_path)


def _unlink(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def read_metric_file(path: Path) -> list[Record]:
    out: list[Record] = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    k, v, t, s = json.loads(line)
                    out.append((k, float(v), int(t), int(s)))
                except (ValueError, TypeError):
                    continue  # a torn line from a crash: skip it
    except FileNotFoundError:
        pass
    return out


def read_table_file(path: Path) -> Iterator[dict[str, Any]]:
    try:
        with open(path) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a torn line from a crash or a full disk
                if isinstance(row, dict):
                    yield row
    except FileNotFoundError:
        return


def log_decision_table(client: Any, run_id: str, rows: Iterable[dict[str, Any]]) -> int:
    """Log ``chuck/decisions.json`` and ``chuck/decisions.csv``, streamed row by row; returns the row count."""
    n = 0
    with tempfile.TemporaryDirectory(prefix="chuck-table-") as d:
        jpath, cpath = Path(d) / "decisions.json", Path(d) / "decisions.csv"
        with open(jpath, "w") as jf, open(cpath, "w", newline="") as cf:
            w = csv.writer(cf)
            w.writerow(["step", "source", "reason", "top_features", "action", "lr", "weight_decay", "clip", "dropout"])
            jf.write("[")
            for r in rows:
                jf.write(("," if n else "") + "\n" + json.dumps(r, default=float))
                hp = r.get("hyperparameters") or {}
                w.writerow([r.get("step"), r.get("source"), r.get("reason"), _top_features(r.get("attribution")),
                            json.dumps([round(a, 3) for a in r.get("action") or []]), hp.get("lr"),
                            hp.get("weight_decay"), hp.get("clip"), hp.get("dropout")])
                n += 1
            jf.write("\n]\n")
        if n:
            client.log_artifact(run_id, str(jpath), artifact_path="chuck")
            client.log_artifact(run_id, str(cpath), artifact_path="chuck")
    return n


def _top_features(attribution: Any, k: int = 3) -> str:
    """The ``k`` features that pushed the lr hardest, as text. Attribution is per action
    dimension ({dim: {feature: weight}}); a flat {feature: weight} (older rows) is read as the lr's."""
    attr = attribution or {}
    if attr and all(isinstance(v, dict) for v in attr.values()):
        attr = attr.get("lr") or {}
    weights = [(f, float(v)) for f, v in attr.items() if isinstance(v, (int, float))]
    return "; ".join(f"{f}={v:+.2f}" for f, v in sorted(weights, key=lambda kv: -abs(kv[1]))[:k])


def replay_spool(spool_path: str | Path, tracking_uri: str | None = None, batch_size: int = 500) -> int:
    """Send a leftover spool (``<run_id>.jsonl``, and the run's ``<run_id>.decisions.jsonl`` table
    beside it) to MLflow; returns the metric records sent. Each file is removed once accepted."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from chuck.tracking import resolve_tracking_uri

    path = Path(spool_path)
    run_id = path.name.split(".")[0]
    spool = Spool(path.parent, run_id)
    client = MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))
    records = [Metric(k, v, t, s) for k, v, t, s in spool.read_metrics()]
    for i in range(0, len(records), batch_size):
        client.log_batch(run_id, metrics=records[i : i + batch_size])
    spool.clear_metrics()
    if spool.table_path.exists():
        log_decision_table(client, run_id, spool.read_decisions())
        spool.clear_decisions()
    return len(records)
