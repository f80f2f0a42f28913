"""The MLflow logger's on-disk spool: metrics waiting to be sent and the decision table.

Three files per run under the spool directory:

* ``<run_id>.jsonl``: metric records ``[key, value, timestamp_ms, step]`` not yet accepted
  by MLflow, rewritten atomically (temporary file, then rename) on every flush;
* ``<run_id>.decisions.jsonl``: one decision per line, appended as decisions come. The
  table is built from it at ``close()`` (``chuck/decisions.json`` and ``.csv``), so
  memory does not grow with the number of decisions (an in-memory list reached
  +433 MiB at 12k decisions), and it survives a server that is down at ``close()``;
* ``<run_id>.meta.json``: what the table needs besides the rows (the hyperparameters before the
  first decision, the run's title and parameters), so that a replayed run gets the same
  timeline, table and description; and how the run ends: whether the logger created it (or
  must still create it: MLflow was unreachable at the start, and ``<run_id>`` is a placeholder),
  whether ``close()`` ran, and what was lost.

Every write reports failure (a full disk, a read-only directory) by returning False
instead of raising: the spool is a safety net, and the logger keeps sending without
it. :func:`replay_spool` sends both files of a run later.
"""

from __future__ import annotations

import contextlib
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
        self._name(run_id)
        self.last_error: OSError | None = None  # why the last write failed

    def _name(self, run_id: str) -> None:
        self.metrics_path = self.directory / f"{run_id}.jsonl"
        self.table_path = self.directory / f"{run_id}.decisions.jsonl"
        self.meta_path = self.directory / f"{run_id}.meta.json"

    def rename(self, run_id: str) -> None:
        """Move the files to ``run_id``'s names (a run created after an outage at its start)."""
        old = (self.metrics_path, self.table_path, self.meta_path)
        self._name(run_id)
        for src, dst in zip(old, (self.metrics_path, self.table_path, self.meta_path)):
            try:
                os.replace(src, dst)
            except FileNotFoundError:
                pass
            except OSError as exc:
                self.last_error = exc

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
            with contextlib.suppress(OSError):
                os.truncate(self.table_path, size)
            return False

    def read_decisions(self) -> Iterator[dict[str, Any]]:
        """Spooled decision rows, streamed from disk."""
        yield from read_table_file(self.table_path)

    def clear_decisions(self) -> None:
        _unlink(self.table_path)

    # -- the run's meta data -------------------------------------------------
    def write_meta(self, meta: dict[str, Any]) -> bool:
        try:
            self.meta_path.write_text(json.dumps(meta, default=float))
            return True
        except OSError as exc:
            self.last_error = exc
            return False

    def read_meta(self) -> dict[str, Any]:
        try:
            meta = json.loads(self.meta_path.read_text())
            return meta if isinstance(meta, dict) else {}
        except (OSError, ValueError):
            return {}

    def clear_meta(self) -> None:
        _unlink(self.meta_path)


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


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


#: Columns of ``chuck/decisions.csv``: who decided, what changed and why come first.
TABLE_COLUMNS = ("step", "source", "changed", "why", "lr", "weight_decay", "clip", "clip_ratio", "dropout", "action", "policy_id")
#: Loss metrics the timeline reads back from the run.
LOSS_METRICS = ("Training/train_loss", "Training/val_loss")


def log_decision_table(
    client: Any,
    run_id: str,
    rows: Iterable[dict[str, Any]],
    meta: dict[str, Any] | None = None,
    describe: bool = True,
    losses: dict[str, tuple[list[float], list[float]]] | None = None,
) -> int:
    """Log the decision artifacts of a run, streamed row by row; returns the row count.

    ``chuck/decisions.csv`` (step, source, what changed, why, hyperparameters), ``chuck/decisions.json``
    (the rows with their attribution, without the observation), ``chuck/observations.csv`` (the raw
    observations) and the timeline (``chuck/timeline.png``, ``chuck/timeline.html``); with
    ``describe``, also the run's description (what the policy did and why). ``meta`` holds the
    hyperparameters before the first decision (``initial``) and the ``title``; ``losses`` the loss
    curves (``{metric: (steps, values)}``; read back from the run when not given).
    """
    with tempfile.TemporaryDirectory(prefix="chuck-table-") as d:
        n, kept = build_decision_artifacts(rows, Path(d), meta, losses if losses is not None else _loss_history(client, run_id))
        if n:
            send_decision_artifacts(client, run_id, Path(d), kept, meta, describe)
    return n


def build_decision_artifacts(
    rows: Iterable[dict[str, Any]],
    directory: Path,
    meta: dict[str, Any] | None,
    losses: dict[str, tuple[list[float], list[float]]],
) -> tuple[int, list[dict[str, Any]]]:
    """Write the decision artifacts into ``directory/chuck`` (no network); returns the row count and the
    slim rows the description needs."""
    from chuck.core.explain import DIM_WORDS, what_changed, why_without_change

    meta = meta or {}
    before: dict[str, float] = dict(meta.get("initial") or {})
    kept: list[dict[str, Any]] = []  # what the timeline and the summary need, small per row
    n = 0
    out = directory / "chuck"
    out.mkdir(parents=True, exist_ok=True)
    with (
        open(out / "decisions.json", "w") as jf,
        open(out / "decisions.csv", "w", newline="") as cf,
        open(out / "observations.csv", "w", newline="") as of,
    ):
        w, ow = csv.writer(cf), csv.writer(of)
        w.writerow(TABLE_COLUMNS)
        obs_names: list[str] | None = None
        jf.write("[")
        for r in rows:
            hp = r.get("hyperparameters") or {}
            changes = {dim: c for dim in DIM_WORDS if (c := what_changed(dim, before, hp)) is not None} if before else {}
            changed = "; ".join(changes.values())
            before = dict(hp)
            slim = {k: v for k, v in r.items() if k != "observation"}
            slim["changed"] = changed
            jf.write(("," if n else "") + "\n" + json.dumps(slim, default=float))
            clip = hp.get("clip")
            w.writerow(
                [
                    r.get("step"),
                    r.get("source"),
                    changed or "nothing",
                    why_without_change(r.get("reason") or "", changes),
                    _num(hp.get("lr")),
                    _num(hp.get("weight_decay")),
                    "off" if clip is None or clip == float("inf") else _num(clip),
                    _num(r.get("clip_ratio")),
                    _num(hp.get("dropout")),
                    json.dumps([round(a, 3) for a in r.get("action") or []]),
                    r.get("policy_id"),
                ]
            )
            obs = r.get("observation") or {}
            if obs_names is None:
                obs_names = list(obs)
                ow.writerow(["step", "source", *obs_names])
            ow.writerow([r.get("step"), r.get("source"), *(obs.get(k) for k in obs_names)])
            kept.append(_slim_for_summary(r))
            n += 1
        jf.write("\n]\n")
    if n:
        try:
            _timeline(kept, meta, losses, out)
        except Exception as exc:  # noqa: BLE001 - the table matters more than its picture
            (out / "timeline_error.txt").write_text(f"{type(exc).__name__}: {exc}\n")
    return n, kept


def send_decision_artifacts(
    client: Any, run_id: str, directory: Path, kept: list[dict[str, Any]], meta: dict[str, Any] | None, describe: bool
) -> None:
    """Log what :func:`build_decision_artifacts` wrote, and (``describe``) the run's description."""
    client.log_artifacts(run_id, str(directory / "chuck"), artifact_path="chuck")
    if describe:
        from chuck.core.explain import run_description

        client.set_tag(run_id, "mlflow.note.content", run_description(kept, meta or {}))


def _num(v: Any) -> str:
    """A number as people read it in a table (4 significant digits); empty when absent."""
    return "" if v is None or v == "" else f"{float(v):.4g}"


def _slim_for_summary(r: dict[str, Any], k: int = 3) -> dict[str, Any]:
    """A decision row with only the top ``k`` attributions per dimension and their observed values."""
    attr = r.get("attribution") or {}
    top = {dim: dict(sorted(fw.items(), key=lambda kv: -abs(kv[1]))[:k]) for dim, fw in attr.items() if isinstance(fw, dict)}
    names = {key.removeprefix("prior: ") for fw in top.values() for key in fw}
    obs = r.get("observation") or {}
    return {
        "step": r.get("step"),
        "source": r.get("source"),
        "reason": r.get("reason"),
        "hyperparameters": r.get("hyperparameters") or {},
        "attribution": top,
        "observation": {n: obs[n] for n in names if n in obs},
    }


def _loss_history(client: Any, run_id: str) -> dict[str, tuple[list[float], list[float]]]:
    out = {}
    for key in LOSS_METRICS:
        try:
            hist = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        except Exception:  # noqa: BLE001 - no curve rather than no table
            hist = []
        out[key] = ([float(m.step) for m in hist], [float(m.value) for m in hist])
    return out


def _timeline(
    rows: list[dict[str, Any]], meta: dict[str, Any], losses: dict[str, tuple[list[float], list[float]]], out: Path
) -> None:
    from chuck.tracking.timeline import Series, Timeline, plot_png, write_html

    train, val = (Series(*map(list, losses.get(k, ([], [])))) for k in LOSS_METRICS)
    tl = Timeline(meta.get("title") or "chuck run", rows, meta.get("initial") or {}, train, val)
    plot_png(tl, out / "timeline.png")
    write_html(tl, out / "timeline.html")


def replay_spool(spool_path: str | Path, tracking_uri: str | None = None, batch_size: int = 500) -> int:
    """Send a leftover spool (``<run_id>.jsonl``, and the run's ``<run_id>.decisions.jsonl`` table
    beside it) to MLflow; returns the metric records sent. Each file is removed once accepted.

    A run the logger could not create (MLflow was unreachable for the whole run) is created now, in
    the experiment it was meant for. A run the logger created ends as its ``close()`` would have
    ended it: ``FINISHED``, ``FAILED`` when records were lost, ``KILLED`` when the process ended
    before ``close()``. A run you passed in keeps its status.
    """
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from chuck.tracking.schema import check_store_schema
    from chuck.tracking.store import resolve_tracking_uri

    path = Path(spool_path)
    run_id = path.name.split(".")[0]
    spool = Spool(path.parent, run_id)
    uri = resolve_tracking_uri(tracking_uri)
    check_store_schema(uri)
    client = MlflowClient(tracking_uri=uri)
    meta = spool.read_meta()
    new_run = meta.get("new_run")
    if isinstance(new_run, dict) and new_run.get("experiment"):
        from chuck.tracking.store import create_run

        run_id = create_run(client, uri, new_run)
        spool.rename(run_id)
        meta["new_run"] = None
        spool.write_meta(meta)  # sent twice is better than a second run if this replay is cut short
    records = [Metric(k, v, t, s) for k, v, t, s in spool.read_metrics()]
    for i in range(0, len(records), batch_size):
        client.log_batch(run_id, metrics=records[i : i + batch_size])
    spool.clear_metrics()
    if meta.get("params"):
        from mlflow.entities import Param

        with contextlib.suppress(Exception):  # a parameter the run already holds: keep the run's
            client.log_batch(run_id, params=[Param(k, str(v)) for k, v in meta["params"].items()])
    if spool.table_path.exists():
        log_decision_table(client, run_id, spool.read_decisions(), meta=meta)
        spool.clear_decisions()
    lost = {k: int(meta.get(k) or 0) for k in ("records_lost", "decisions_lost")}
    if any(lost.values()):
        for key, n in lost.items():
            client.set_tag(run_id, f"chuck.{key}", str(n))
    if meta.get("owns_run"):
        status = "FAILED" if any(lost.values()) else "FINISHED" if meta.get("closed") else "KILLED"
        client.set_terminated(run_id, status=status)
    spool.clear_meta()
    return len(records)
