"""Log chuck's decisions to MLflow without slowing or breaking training.

    logger = chuck.MLflowDecisionLogger(run_id=run.info.run_id)   # or experiment=... to start a run
    opt = chuck.ChuckOptimizer(base, "default", model=model, tracking=logger)

Per decision it logs, at the decision's step: ``chuck.lr``, ``chuck.weight_decay``,
``chuck.clip``, ``chuck.dropout``, ``chuck.action.<dim>`` and every observation feature
(``chuck.obs.<name>``); at ``close()`` a decision table artifact
(``chuck/decisions.json`` and ``.csv``: step, source, named observation, action,
hyperparameters, reason, attribution). Tags: ``chuck.policy_id``,
``chuck.policy_version``, ``chuck.mode``.

Why it cannot slow training: ``ChuckOptimizer`` only appends records to an
in-memory queue; a daemon thread sends them in batches (``log_batch``, up to
``batch_size`` metrics) every ``flush_every`` seconds. Why it cannot break training:
every batch is first written to a bounded on-disk spool (JSON lines under
``$CHUCK_HOME/spool``, ``max_spool_records``, oldest dropped first, a count of
dropped records kept), then sent, and removed from the spool only once MLflow
accepted it. When the server is down the records wait there and are replayed, in
order, once sends succeed again; a crash or a hung request loses nothing
(:func:`replay_spool` sends a leftover spool file later). ``close()`` gives up after
its ``timeout`` and leaves what is unsent in the spool.

The MLflow client retries failed requests for minutes by default; unless you set
them, the logger lowers ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` (to 2) and
``MLFLOW_HTTP_REQUEST_TIMEOUT`` (to 10 s) so that an outage is noticed quickly.
"""

from __future__ import annotations

import json
import math
import os
import queue
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from chuck.report import Decision


class MLflowDecisionLogger:
    """Asynchronous, spooling MLflow logger for :class:`chuck.ChuckOptimizer` decisions.

    Args:
        run_id: log into this existing run; otherwise a run is created in ``experiment``.
        experiment: experiment for a new run (default ``"chuck"``).
        run_name: name of a new run.
        tracking_uri: MLflow tracking URI (default: local SQLite under CHUCK_HOME).
        flush_every: seconds between background sends.
        batch_size: metrics per ``log_batch`` call (MLflow accepts up to 1000).
        spool_dir: where failed batches wait (default: a temporary directory).
        max_spool_records: bound of the spool, in metric records.
        log_observation: also log every observation feature as a metric.
    """

    def __init__(
        self,
        run_id: str | None = None,
        *,
        experiment: str = "chuck",
        run_name: str | None = None,
        tracking_uri: str | None = None,
        flush_every: float = 2.0,
        batch_size: int = 500,
        spool_dir: str | Path | None = None,
        max_spool_records: int = 200_000,
        log_observation: bool = True,
    ) -> None:
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        from mlflow import MlflowClient

        from chuck.home import chuck_home
        from chuck.tracking import default_tracking_uri, setup

        self.tracking_uri = tracking_uri or default_tracking_uri()
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        if run_id is None:
            setup(self.tracking_uri, experiment)
            exp = self.client.get_experiment_by_name(experiment)
            run_id = self.client.create_run(exp.experiment_id, run_name=run_name).info.run_id
            self._owns_run = True
        else:
            self._owns_run = False
        self.run_id = run_id
        self.flush_every, self.batch_size = flush_every, batch_size
        self.log_observation = log_observation
        self.spool_path = Path(spool_dir or chuck_home() / "spool") / f"{run_id}.jsonl"
        self.spool_path.parent.mkdir(parents=True, exist_ok=True)
        self.max_spool_records = max_spool_records
        self.dropped = 0
        self.sent = 0
        self._queue: queue.Queue[tuple[str, float, int, int]] = queue.Queue()
        self._decisions: list[dict[str, Any]] = []
        self._tags: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="chuck-mlflow-logger", daemon=True)
        self._thread.start()
        self._closed = False

    # -- called by ChuckOptimizer (hot path: queue puts only) --------------
    def attach(self, opt: Any) -> None:
        pol = getattr(opt, "policy", None)
        self._tags = {
            "chuck.policy_id": opt.policy_id,
            "chuck.policy_version": getattr(pol, "version", "external") if pol is not None else "external",
            "chuck.mode": "external" if pol is None else "policy",
            "chuck.interval": str(opt.interval),
        }
        opt.add_decision_listener(self)

    def __call__(self, opt: Any, d: Decision) -> None:
        now = int(time.time() * 1000)
        put = self._queue.put
        for k in ("lr", "weight_decay", "clip", "dropout"):
            v = d.hyperparameters.get(k)
            if v is not None and math.isfinite(v):
                put((f"chuck.{k}", float(v), now, d.step))
        for dim, a in zip(("lr", "weight_decay", "clip", "dropout"), d.action):
            put((f"chuck.action.{dim}", float(a), now, d.step))
        if d.source == "guardrail":
            put(("chuck.guardrail_event", 1.0, now, d.step))
        if self.log_observation:
            for k, v in d.observation.items():
                put((f"chuck.obs.{k}", float(v), now, d.step))
        self._decisions.append(d.as_dict())

    def log_metric(self, key: str, value: float, step: int) -> None:
        """Queue any other metric (the demo logs its losses this way)."""
        if math.isfinite(value):
            self._queue.put((key, float(value), int(time.time() * 1000), int(step)))

    # -- background sending ------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.wait(self.flush_every):
            self.flush()

    def flush(self) -> bool:
        """Send what is queued (spooled records first). Returns True when nothing is left unsent."""
        with self._lock:
            pending = []
            while True:
                try:
                    pending.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            records = self._read_spool() + pending
            if not records:
                return True
            self._write_spool(records)  # persisted before sending: a hang or a crash loses nothing
            try:
                self._send(records)
            except Exception:  # noqa: BLE001 - server down or any transport failure: the spool keeps it
                return False
            self.spool_path.unlink(missing_ok=True)
            return True

    def _send(self, records: list[tuple[str, float, int, int]]) -> None:
        from mlflow.entities import Metric, RunTag

        tags = [RunTag(k, v) for k, v in self._tags.items()]
        for i in range(0, max(len(records), 1), self.batch_size):
            chunk = records[i : i + self.batch_size]
            self.client.log_batch(self.run_id, metrics=[Metric(k, v, t, s) for k, v, t, s in chunk],
                                  tags=tags if i == 0 else [])
            self.sent += len(chunk)

    def _read_spool(self) -> list[tuple[str, float, int, int]]:
        if not self.spool_path.exists():
            return []
        out = []
        for line in self.spool_path.read_text().splitlines():
            try:
                k, v, t, s = json.loads(line)
                out.append((k, float(v), int(t), int(s)))
            except (ValueError, TypeError):
                continue  # a torn line from a crash: skip it
        return out

    def _write_spool(self, records: list[tuple[str, float, int, int]]) -> None:
        if len(records) > self.max_spool_records:
            self.dropped += len(records) - self.max_spool_records
            records = records[-self.max_spool_records :]
        tmp = self.spool_path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
        tmp.replace(self.spool_path)

    @property
    def spooled(self) -> int:
        """Records waiting in the spool."""
        return len(self._read_spool())

    # -- end ---------------------------------------------------------------
    def close(self, timeout: float = 30.0) -> None:
        """Stop the thread, send everything (retrying until ``timeout``), log the decision table."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        deadline = time.monotonic() + timeout
        self._thread.join(timeout=timeout)

        def final_flush() -> None:
            while not self.flush() and time.monotonic() < deadline:
                time.sleep(0.5)

        # in a thread, so that a request hanging past the deadline cannot hold the caller
        closer = threading.Thread(target=final_flush, daemon=True)
        closer.start()
        closer.join(timeout=max(0.0, deadline - time.monotonic()))
        if self.spooled:
            warnings.warn(f"chuck: MLflow unreachable; {self.spooled} records kept in {self.spool_path} "
                          "(send them later with chuck.mlflow_logger.replay_spool)", RuntimeWarning, stacklevel=2)
            return
        try:
            self._log_table()
            if self.dropped:
                self.client.set_tag(self.run_id, "chuck.spool_dropped", str(self.dropped))
            if self._owns_run:
                self.client.set_terminated(self.run_id)
        except Exception as exc:  # noqa: BLE001 - never raise into the user's code
            warnings.warn(f"chuck: could not log the decision table to MLflow ({exc}); "
                          f"unsent records stay in {self.spool_path}", RuntimeWarning, stacklevel=2)

    def _log_table(self) -> None:
        if not self._decisions:
            return
        import csv

        with tempfile.TemporaryDirectory() as d:
            jpath = Path(d) / "decisions.json"
            jpath.write_text(json.dumps(self._decisions, indent=1, default=float))
            cpath = Path(d) / "decisions.csv"
            with open(cpath, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["step", "source", "reason", "top_features", "action", "lr", "weight_decay", "clip", "dropout"])
                for r in self._decisions:
                    hp = r["hyperparameters"]
                    top = sorted(r["attribution"].items(), key=lambda kv: -abs(kv[1]))[:3]
                    w.writerow([r["step"], r["source"], r["reason"], "; ".join(f"{k}={v:+.2f}" for k, v in top),
                                json.dumps([round(a, 3) for a in r["action"]]), hp.get("lr"), hp.get("weight_decay"),
                                hp.get("clip"), hp.get("dropout")])
            self.client.log_artifact(self.run_id, str(jpath), artifact_path="chuck")
            self.client.log_artifact(self.run_id, str(cpath), artifact_path="chuck")

    def __enter__(self) -> MLflowDecisionLogger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def replay_spool(spool_path: str | Path, tracking_uri: str | None = None, batch_size: int = 500) -> int:
    """Send a leftover spool file (named ``<run_id>.jsonl``) to MLflow; returns the records sent.

    The file is removed once everything is accepted.
    """
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from chuck.tracking import default_tracking_uri

    path = Path(spool_path)
    client = MlflowClient(tracking_uri=tracking_uri or default_tracking_uri())
    records = []
    for line in path.read_text().splitlines():
        try:
            k, v, t, s = json.loads(line)
            records.append(Metric(k, float(v), int(t), int(s)))
        except (ValueError, TypeError):
            continue
    for i in range(0, len(records), batch_size):
        client.log_batch(path.stem, metrics=records[i : i + batch_size])
    path.unlink()
    return len(records)
