"""Log chuck's decisions to MLflow without slowing or breaking training, so that the run page tells the story.

    logger = chuck.MLflowDecisionLogger(run_id=run.info.run_id)   # or experiment=... to start a run
    opt = chuck.ChuckOptimizer(base, "default", model=model, tracking=logger)

What a run page shows (metric names group into sections on MLflow's "Model metrics" tab):

* **Training** section, at the steps they belong to: ``Training/train_loss`` (mean over every
  ``loss_every`` steps) and ``Training/val_loss`` (each ``opt.observe(val_loss=...)``) next to the
  effective ``Training/lr`` (the lr each step ran with, logged where it changes so that MLflow's
  chart is step-shaped: :class:`_StepTap`) and ``Training/weight_decay`` at every decision (sorted,
  they fill the first row: lr, train_loss, val_loss);
* **chuck** section, at every decision: ``chuck/clip_on`` (0/1), ``chuck/clip_ratio`` (threshold /
  median gradient norm, while on), ``chuck/dropout`` and ``chuck/decision_source`` (0 policy or
  external, 1 fallback, 2 guardrail: decisions as markers);
* ``chuck.action/<dim>``: the policy's raw action; ``chuck.obs/<feature>``: every observation feature;
* system metrics (CPU, memory, disk, network, GPU where present) through MLflow's own monitor;
* parameters: the model (class, parameter count, layers), the base optimizer and its initial
  hyperparameters, the policy and a summary of its card, the decision interval, chuck's version,
  and whatever ``params`` you pass (the demo passes its task);
* artifacts at ``close()``: ``chuck/timeline.html`` (interactive) and ``chuck/timeline.png``
  (losses above, hyperparameters below, every decision marked by source, the largest changes
  numbered and told in full below the panels; :mod:`chuck.tracking.timeline`), ``chuck/decisions.csv`` (step, source,
  what changed, why, then the hyperparameters), ``chuck/decisions.json`` (the same with the
  per-dimension attribution) and ``chuck/observations.csv`` (the raw observations, one row per
  decision);
* the run's description: what the policy did and why, in words (:func:`chuck.core.explain.summarize_decisions`);
* tags ``chuck.policy_id``, ``chuck.policy_version``, ``chuck.mode``, ``chuck.interval``; a run
  the logger creates is put in an experiment tagged ``mlflow.experimentKind=custom_model_development``.

Why it cannot slow training: ``ChuckOptimizer`` only appends records to in-memory
queues; a daemon thread sends them in batches (``log_batch``, up to ``batch_size``
metrics) every ``flush_every`` seconds.

Why it starts and ends in about a second (``experiments/bench_mlflow_logger.py``, figures in
docs/mlflow.md): what took the time was importing MLflow and opening its store (seconds; the
first run under a ``CHUCK_HOME`` also builds the SQLite schema, about ten seconds), then, at
``close()``, importing matplotlib and laying out the timeline. The constructor now only checks
the tracking URI (without importing MLflow for its own schemes) and starts the sender thread,
which imports MLflow, creates the run (:attr:`run_id` waits for it) and loads matplotlib while
the run trains; the timeline is drawn with a fixed layout, without pyplot.

Why it cannot break training, and what it does when things go wrong:

* Every batch is first written to a bounded on-disk spool (:mod:`chuck.tracking.spool`,
  under ``$CHUCK_HOME/spool`` or ``spool_dir``), then sent, and removed from the spool
  once MLflow accepted it. When the server is down the records wait there and are sent,
  in order, once it is back; :func:`replay_spool` sends a leftover spool later.
* Decision rows are appended to the spool as they come, never kept in a list, and the
  table is built from there at ``close()``: memory does not grow with the run, and the
  table survives a server that is down at ``close()``.
* The spool is a safety net, not a gate: if it cannot be written (full disk), records
  are still sent; while they cannot be sent either they wait in memory, at most
  ``max_spool_records`` metrics and ``max_table_rows_in_memory`` decision rows.
  Whatever exceeds a bound is lost and counted (:attr:`lost`,
  :attr:`decisions_lost`).
* Loss is reported, never hidden: ``close()`` warns with the counts and writes the tags
  ``chuck.records_lost`` / ``chuck.decisions_lost`` on the run; a run the logger created
  ends with status ``FAILED`` instead of ``FINISHED`` (a run you passed in keeps its
  status: it is yours to end, the tags say what is missing). :func:`replay_spool` ends a run
  the logger created with the status ``close()`` would have given it.
* An unwritable ``CHUCK_HOME`` (or ``spool_dir``) falls back to a temporary spool with a
  warning.
* MLflow unreachable when the logger starts a run (``experiment=...``) is an outage like one
  mid-run: one warning, and the records wait in the spool under a placeholder :attr:`run_id`;
  the run is created (dated when the logger started) when the server answers, and
  :attr:`run_id` is then its id. If it never answers, :func:`replay_spool` creates it later.
  A tracking URI that names no MLflow store (``foo://bar``) is a mistake, not an outage:
  ValueError at once.
* SIGTERM (``docker stop``, SLURM preemption) closes the logger before the process ends
  (:mod:`chuck.core.termination`), waiting at most :data:`SIGTERM_CLOSE_TIMEOUT` seconds for
  MLflow: what is unsent is in the spool by then.
* ``close()`` gives up after ``close_timeout`` seconds (default 10; ``close(timeout=...)``
  overrides it once) and leaves what is unsent in the spool, so a server that is gone
  costs at most that much at the end of training.

The MLflow client retries failed requests for minutes by default; unless you set
them, the logger lowers ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` (to 2) and
``MLFLOW_HTTP_REQUEST_TIMEOUT`` (to 10 s) so that an outage is noticed quickly.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import tempfile
import threading
import time
import uuid
import warnings
import weakref
from itertools import chain
from pathlib import Path
from typing import Any

from chuck.core.report import Decision
from chuck.core.termination import on_sigterm, terminating
from chuck.monitors.base import Indicator, Monitor, StepRecord
from chuck.tracking.spool import (
    LOSS_METRICS,
    Record,
    Spool,
    build_decision_artifacts,
    replay_spool,
    send_decision_artifacts,
)
from chuck.tracking.store import EXPERIMENT_KIND  # noqa: F401 - re-exported: it was defined here before

__all__ = ["MLflowDecisionLogger", "replay_spool"]

#: Code of each decision source in the ``chuck/decision_source`` metric.
SOURCE_CODES = {"policy": 0.0, "external": 0.0, "fallback": 1.0, "guardrail": 2.0}
#: Loss points kept in memory for the timeline (halved whenever exceeded).
MAX_CURVE_POINTS = 4096
#: Seconds ``close()`` waits for MLflow while the process handles SIGTERM: ``docker stop`` sends
#: SIGKILL 10 s after SIGTERM, and the history record and the spool must be on disk before that.
SIGTERM_CLOSE_TIMEOUT = 3.0


class MLflowDecisionLogger:
    """Asynchronous, spooling MLflow logger for :class:`chuck.ChuckOptimizer` decisions.

    Args:
        run_id: log into this existing run; otherwise a run is created in ``experiment``.
        experiment: experiment for a new run (default ``"chuck"``).
        run_name: name of a new run.
        tracking_uri: MLflow tracking URI (default: :func:`chuck.tracking.store.resolve_tracking_uri`).
        flush_every: seconds between background sends.
        batch_size: metrics per ``log_batch`` call (MLflow accepts up to 1000).
        spool_dir: where unsent records and the decision table wait (default
            ``$CHUCK_HOME/spool``; a temporary directory, with a warning, if that is not writable).
        max_spool_records: bound of the metric spool, and of the metrics held in memory
            when the spool cannot be written, in records.
        max_table_rows_in_memory: decision rows held in memory when the spool cannot be written.
        log_observation: also log every observation feature as a metric (``chuck.obs/<name>``).
        close_timeout: seconds ``close()`` waits for MLflow before leaving the rest in the spool.
        params: extra run parameters (e.g. ``{"task": "cv.digits_mlp"}``), logged with chuck's own.
        loss_every: log the mean training loss over this many steps (``0``: do not log losses).
        system_metrics: log MLflow's system metrics (CPU, memory, GPU, ...) every this many seconds
            (``True``: 10); ``False`` for none. Needs ``psutil``.
    """

    def __init__(
        self,
        run_id: str | None = None,
        *,
        experiment: str = "chuck",
        run_name: str | None = None,
        tracking_uri: str | None = None,
        flush_every: float = 1.0,
        batch_size: int = 500,
        spool_dir: str | Path | None = None,
        max_spool_records: int = 200_000,
        max_table_rows_in_memory: int = 1_000,
        log_observation: bool = True,
        close_timeout: float = 10.0,
        params: dict[str, Any] | None = None,
        loss_every: int = 10,
        system_metrics: bool | float = True,
    ) -> None:
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        from chuck.tracking.schema import check_store_schema
        from chuck.tracking.store import check_reachable, check_tracking_uri, resolve_tracking_uri

        self.tracking_uri = check_tracking_uri(resolve_tracking_uri(tracking_uri))  # a typo is an error, not an outage
        check_store_schema(self.tracking_uri)  # so is a store this MLflow cannot read: waiting never fixes it
        self._client: Any = None  # made on first use, by the sender thread (importing MLflow takes seconds)
        self._client_lock = threading.Lock()
        self._owns_run = run_id is None
        self._new_run: dict[str, Any] | None = None  # the run to create once MLflow answers
        self._connected = threading.Event()  # the sender thread's first attempt to reach MLflow is over
        outage = ""
        if run_id is None:
            self._new_run = {"experiment": experiment, "run_name": run_name, "start_time": int(time.time() * 1000)}
            try:
                check_reachable(self.tracking_uri)  # a dead server answers in seconds, not after the client's retries
            except Exception as exc:  # noqa: BLE001 - an outage at the start is spooled like one mid-run
                outage = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            run_id = uuid.uuid4().hex  # a placeholder naming the spool until the run exists
        self._run_id = run_id
        self._experiment = experiment
        self.flush_every, self.batch_size = flush_every, batch_size
        self.log_observation = log_observation
        self.close_timeout = close_timeout
        self.max_spool_records = max_spool_records
        self.max_table_rows_in_memory = max_table_rows_in_memory
        self._spool = Spool(_spool_directory(spool_dir), run_id)
        if outage:
            warnings.warn(
                f"chuck: MLflow at {self.tracking_uri} is unreachable ({outage}); training goes on, records wait in "
                f"{self._spool.directory} and the run is created in experiment {experiment!r} once MLflow answers",
                RuntimeWarning,
                stacklevel=2,
            )
        self.sent = 0
        # Loss counters, one per writing thread (training thread / sender thread): no shared +=.
        self._lost_queued = self._lost_bounded = 0
        self._rows_lost_queued = self._rows_lost_bounded = 0
        self._backlog: list[Record] = []  # metrics that neither the spool nor MLflow took
        self._table_backlog: list[dict[str, Any]] = []  # decision rows the spool did not take
        self._spool_warned = False
        self._metrics: queue.SimpleQueue[Record] = queue.SimpleQueue()
        self._rows: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self._tags: dict[str, str] = {}
        self._params: dict[str, str] = {}  # parameters not yet accepted by MLflow
        self._meta: dict[str, Any] = {
            "initial": {},
            "title": run_name or "",
            "params": {},
            "owns_run": self._owns_run,  # replay_spool ends the runs the logger created, and only those
            "new_run": self._new_run,
        }
        self.loss_every = int(loss_every)
        self._losses: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in LOSS_METRICS}  # for the timeline
        self._lr_tap: _StepTap | None = None
        self._last_error = ""
        self.add_params(params or {})
        # Two locks, so that spooling never waits behind the network: `_send_lock` lets one thread
        # send at a time (and may be held for a whole hung request); `_spool_lock` guards the spool
        # files and the in-memory backlogs and is held only for local file work.
        self._send_lock = threading.Lock()
        self._spool_lock = threading.RLock()
        self._abandoned = False  # close() gave up: the spool is final, a late sender must not touch it
        self._stop = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, args=(bool(outage),), name="chuck-mlflow-logger", daemon=True)
        self._system_metrics = system_metrics
        self._system: Any = None
        self._spool.write_meta(self._meta)  # a spool left by a process that never reached MLflow still names its run
        self._unregister_sigterm = on_sigterm(_closer(weakref.ref(self)))
        self._thread.start()

    @property
    def client(self) -> Any:
        """The ``MlflowClient`` of :attr:`tracking_uri` (created on first use: importing MLflow takes seconds)."""
        with self._client_lock:
            if self._client is None:
                from mlflow import MlflowClient

                self._client = MlflowClient(tracking_uri=self.tracking_uri)
            return self._client

    @property
    def run_id(self) -> str:
        """The MLflow run's id.

        A run the logger creates is created by its sender thread, so that the caller's training starts
        at once (importing MLflow and opening a store take seconds, a new SQLite store's schema more);
        reading this waits until that first attempt is over (a server that accepts and never answers
        holds it for the client's request timeouts). While MLflow is unreachable it is a placeholder
        naming the spool, and the run's id once it exists.
        """
        if not self._connected.is_set() and threading.current_thread() is not self._thread:
            self._connected.wait()
        return self._run_id

    # -- counters ----------------------------------------------------------
    @property
    def spool_path(self) -> Path:
        """The metric spool file (``<spool_dir>/<run_id>.jsonl``)."""
        return self._spool.metrics_path

    @property
    def lost(self) -> int:
        """Metric records lost so far (over a bound while neither the spool nor MLflow took them)."""
        return self._lost_queued + self._lost_bounded

    dropped = lost  # this counter's earlier name, kept for existing callers

    @property
    def decisions_lost(self) -> int:
        """Decision-table rows lost so far."""
        return self._rows_lost_queued + self._rows_lost_bounded

    @property
    def spooled(self) -> int:
        """Metric records waiting to be sent (in the spool, or in memory when it cannot be written)."""
        return len(self._spool.read_metrics()) + len(self._backlog)

    # -- called by ChuckOptimizer (hot path: queue puts only) --------------
    def attach(self, opt: Any) -> None:
        pol = getattr(opt, "policy", None)
        self._tags = {
            "chuck.policy_id": opt.policy_id,
            "chuck.policy_version": getattr(pol, "version", "external") if pol is not None else "external",
            "chuck.mode": "external" if pol is None else "policy",
            "chuck.interval": str(opt.interval),
        }
        self.add_params(run_parameters(opt))
        hp = dict(getattr(opt, "hyperparameters", {}) or {})
        self._meta["initial"] = {k: float(v) for k, v in hp.items() if isinstance(v, (int, float))}
        base = type(getattr(opt, "optimizer", opt)).__name__
        self._meta["title"] = (
            f"{self._meta['title'] or 'run'}: {base} from lr {hp.get('lr', math.nan):.3g} under chuck ({opt.policy_id})"
        )
        self._spool.write_meta(self._meta)
        self._median_norm = getattr(getattr(opt, "control", None), "median_grad_norm", None)
        monitors = getattr(opt, "monitors", None)
        spec, base_opt = getattr(opt, "action_spec", None), getattr(opt, "optimizer", None)
        if monitors is not None and hasattr(monitors, "add") and spec is not None and base_opt is not None:
            self._lr_tap = _StepTap(self, self.loss_every, spec, base_opt)
            monitors.add(self._lr_tap)
        register = getattr(opt, "register_decision_hook", None)
        if register is not None:
            self._hook_handle = register(self)
        else:  # a ChuckOptimizer from before hooks returned handles
            opt.add_decision_listener(self)

    def add_params(self, params: dict[str, Any]) -> None:
        """Log run parameters (sent with the next batch; a value the run already holds is kept)."""
        clean = {str(k)[:250]: str(v)[:6000] for k, v in params.items() if v is not None}
        self._params.update(clean)
        self._meta["params"].update(clean)

    def __call__(self, opt: Any, d: Decision) -> None:
        now = int(time.time() * 1000)
        put = self._put
        hp = d.hyperparameters
        logged: tuple[tuple[str, str], ...] = (("Training/weight_decay", "weight_decay"), ("chuck/dropout", "dropout"))
        if self._lr_tap is None or self._lr_tap.on_device:  # nothing logs the lr step by step: log it at each decision
            logged = (("Training/lr", "lr"), *logged)
        for key, k in logged:
            v = hp.get(k)
            if v is not None and math.isfinite(v):
                put((key, float(v), now, d.step))
        clip = hp.get("clip", math.inf)
        put(("chuck/clip_on", 0.0 if math.isinf(clip) else 1.0, now, d.step))
        row = d.as_dict()
        median_of = getattr(self, "_median_norm", None)
        median = float(median_of()) if median_of is not None else math.nan
        if math.isfinite(clip) and median > 0 and math.isfinite(median):
            row["clip_ratio"] = clip / median
            put(("chuck/clip_ratio", clip / median, now, d.step))
        put(("chuck/decision_source", SOURCE_CODES.get(d.source, 0.0), now, d.step))
        self._tags.update({"chuck.mostly_out_of_distribution": str(d.step)} if "MOSTLY OUT OF DISTRIBUTION" in d.reason else {})
        for dim, a in zip(("lr", "weight_decay", "clip", "dropout"), d.action):
            put((f"chuck.action/{dim}", float(a), now, d.step))
        if self.log_observation:
            for k, v in d.observation.items():
                put((f"chuck.obs/{k}", float(v), now, d.step))
        # a sender stuck on a hung request cannot drain the queues: bound them too
        if self._rows.qsize() < self.max_table_rows_in_memory:
            self._rows.put(row)
        else:
            self._rows_lost_queued += 1

    def _put(self, record: Record) -> None:
        if self._metrics.qsize() < self.max_spool_records:
            self._metrics.put(record)
        else:
            self._lost_queued += 1

    def log_metric(self, key: str, value: float, step: int) -> None:
        """Queue any other metric (the demo's plain-AdamW arm logs its losses and lr this way)."""
        if math.isfinite(value):
            self._put((key, float(value), int(time.time() * 1000), int(step)))
            if key in self._losses:
                steps, values = self._losses[key]
                steps.append(float(step))
                values.append(float(value))
                if len(steps) > MAX_CURVE_POINTS:  # bounded memory: keep every other point
                    del steps[1::2], values[1::2]

    # -- background sending ------------------------------------------------
    def _loop(self, outage: bool = False) -> None:
        self._connect(outage)
        while not self._stop.wait(self.flush_every):
            try:
                self.flush()
            except Exception as exc:  # noqa: BLE001 - the sender must outlive any single failure
                warnings.warn(
                    f"chuck: MLflow sender error, will retry: {type(exc).__name__}: {exc}", RuntimeWarning, stacklevel=1
                )

    def _connect(self, outage: bool) -> None:
        """The sender thread's first work, off the training thread: import MLflow, create the run (unless
        the constructor already found the server down: then each flush tries), tag its experiment, start
        the system metrics; then load what drawing the timeline at ``close()`` needs."""
        try:
            with self._send_lock:
                if not self._owns_run:
                    self._tag_experiment_of_run()
                    if not self._closed:
                        self._system = _start_system_metrics(self._run_id, self.tracking_uri, self._system_metrics)
                elif self._new_run is not None and not outage and not self._create_pending_run():
                    warnings.warn(
                        f"chuck: MLflow at {self.tracking_uri} cannot create the run ({self._last_error}); training "
                        f"goes on, records wait in {self._spool.directory} and the run is created in experiment "
                        f"{self._experiment!r} once MLflow answers",
                        RuntimeWarning,
                        stacklevel=1,
                    )
        except Exception:  # noqa: BLE001, S110 - MLflow unreachable or not installed: flush() retries
            pass
        finally:
            self._connected.set()
        if not self._stop.is_set():
            _prepare_rendering()

    def _tag_experiment_of_run(self) -> None:
        """Give the experiment of a run passed in chuck's kind tag (MLflow 3 opens it on its runs view)."""
        from chuck.tracking.store import tag_experiment_kind

        with contextlib.suppress(Exception):  # unreachable, or the run is not there: it is not ours to fix
            tag_experiment_kind(self.client, self.client.get_run(self._run_id).info.experiment_id)

    def flush(self) -> bool:
        """Spool the decision rows and the queued metrics, then send what is unsent (spooled first).

        Returns True when no metric is left unsent.
        """
        with self._send_lock:
            records = self._take_in()
            if self._new_run is not None and not self._create_pending_run():
                return False  # nothing can be sent, not even the table, before the run exists
            if not records:
                return True
            sent = self._send(records)
            with self._spool_lock:
                if self._abandoned:
                    return False
                pending = self._spool.read_metrics() + self._backlog  # may have grown since (close())
                rest = pending[sent:] if pending[: len(records)] == records else pending
                if not rest:
                    self._spool.clear_metrics()
                    self._backlog = []
                    return True
                if sent:
                    self._persist(rest)
                return False

    def _create_pending_run(self) -> bool:
        """Create the run MLflow could not create at the start; move the spool to its id. False while unreachable."""
        from chuck.tracking.store import check_reachable, create_run

        assert self._new_run is not None
        try:
            check_reachable(self.tracking_uri, timeout=2.0)  # a refused connection fails at once, without retries
            run_id = create_run(self.client, self.tracking_uri, self._new_run)
        except Exception as exc:  # noqa: BLE001 - still down: the records wait
            self._last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            return False
        with self._spool_lock:
            self._spool.rename(run_id)
            self._run_id, self._new_run = run_id, None
            self._meta["new_run"] = None
            self._spool.write_meta(self._meta)
        if not self._closed:
            self._system = _start_system_metrics(run_id, self.tracking_uri, self._system_metrics)
        return True

    def _take_in(self) -> list[Record]:
        """Move what the training thread queued into the spool; every unsent metric record, oldest first.

        Persisted before any sending, so that a hung request or a crash loses nothing; never waits
        for the network (close() calls it while a sender may be stuck)."""
        with self._spool_lock:
            self._spool_rows(_drain(self._rows))
            records = self._spool.read_metrics() + self._backlog
            queued = _drain(self._metrics)
            if not queued:
                return records
            records = self._bounded(records + queued)
            self._persist(records)
            return records

    def _spool_rows(self, rows: list[dict[str, Any]]) -> None:
        rows = self._table_backlog + rows  # earlier rows first: the table stays in step order
        self._table_backlog = []
        if not self._spool.append_decisions(rows):
            self._spool_failed()
            keep = rows[-self.max_table_rows_in_memory :]
            self._rows_lost_bounded += len(rows) - len(keep)
            self._table_backlog = keep

    def _bounded(self, records: list[Record]) -> list[Record]:
        if len(records) > self.max_spool_records:  # oldest dropped first
            self._lost_bounded += len(records) - self.max_spool_records
            records = records[-self.max_spool_records :]
        return records

    def _persist(self, records: list[Record]) -> None:
        if self._spool.write_metrics(records):
            self._backlog = []
        else:
            self._spool_failed()
            self._spool.clear_metrics()  # stale now: memory holds every unsent record
            self._backlog = records

    def _spool_failed(self) -> None:
        if not self._spool_warned:
            self._spool_warned = True
            warnings.warn(
                f"chuck: could not write the spool in {self._spool.directory} ({self._spool.last_error}); records "
                f"are still sent, but during an outage at most {self.max_spool_records} wait in memory and the "
                "rest are lost (counted, and reported at close())",
                RuntimeWarning,
                stacklevel=1,
            )

    def _send(self, records: list[Record]) -> int:
        """Send in batches; the number of records MLflow accepted (a prefix of ``records``)."""
        from mlflow.entities import Metric, RunTag

        self._send_params()
        tags = [RunTag(k, v) for k, v in self._tags.items()]
        done = 0
        try:
            for i in range(0, len(records), self.batch_size):
                chunk = records[i : i + self.batch_size]
                self.client.log_batch(
                    self._run_id, metrics=[Metric(k, v, t, s) for k, v, t, s in chunk], tags=tags if i == 0 else []
                )
                done += len(chunk)
                self.sent += len(chunk)
        except Exception:  # noqa: BLE001, S110 - server down or any transport failure: the records wait
            pass
        return done

    def _send_params(self) -> None:
        """Send the parameters not yet accepted; one the run already holds with another value is skipped
        (a run you passed in keeps yours). A transport failure leaves the rest for the next flush."""
        if not self._params:
            return
        from mlflow.entities import Param

        try:
            self.client.log_batch(self._run_id, params=[Param(k, v) for k, v in self._params.items()])
            self._params = {}
            return
        except Exception:  # noqa: BLE001 - a conflict or the server down: find out one by one
            pass
        for k, v in list(self._params.items()):
            try:
                self.client.log_param(self._run_id, k, v)
            except Exception as exc:  # noqa: BLE001
                if getattr(exc, "error_code", "") != "INVALID_PARAMETER_VALUE":
                    return  # unreachable: retry at the next flush
            self._params.pop(k, None)

    # -- end ---------------------------------------------------------------
    def close(self, timeout: float | None = None) -> None:
        """Stop the thread, send everything, log the decision table, end an owned run.

        Waits at most ``timeout`` seconds (default: ``close_timeout``); what is unsent by then
        stays in the spool for :func:`replay_spool`. Never raises; warns about anything unsent or lost.
        """
        if self._closed:
            return
        self._closed = True
        self._unregister_sigterm()
        if self._lr_tap is not None:
            self._lr_tap.end()  # the lr held until the last step: the chart's last flat stretch
        timeout = self.close_timeout if timeout is None else timeout
        if terminating():  # SIGTERM: what is unsent goes to the spool before the sender's SIGKILL
            timeout = min(timeout, SIGTERM_CLOSE_TIMEOUT)
        deadline = time.monotonic() + timeout
        self._stop.set()
        self._take_in()  # everything on disk now, whatever a stuck sender is doing
        self._thread.join(timeout=max(0.0, deadline - time.monotonic()))
        outcome: dict[str, Any] = {}
        # in a thread, so that a request hanging past the deadline cannot hold the caller
        closer = threading.Thread(target=self._finish, args=(deadline, outcome), name="chuck-mlflow-close", daemon=True)
        closer.start()
        while closer.is_alive():
            # drawing the timeline is local work, not waiting for MLflow: it does not use up the deadline
            left = deadline + _render_seconds(outcome) - time.monotonic()
            if left <= 0:
                break
            closer.join(timeout=min(left, 0.2))
        if "error" in outcome:
            warnings.warn(
                f"chuck: could not log the decision table to MLflow ({outcome['error']}); it stays in {self._spool.table_path}",
                RuntimeWarning,
                stacklevel=2,
            )
        elif not outcome.get("done"):
            with self._spool_lock:  # from here on the spool is replay_spool's: no late sender may change it
                self._take_in()
                self._abandoned = True
            # unsent metrics that are only in memory (spool unwritable) die with the process
            self._lost_bounded += len(self._backlog)
            self._rows_lost_bounded += len(self._table_backlog)
            # what replay_spool needs to end the run as close() would have: FAILED when records were lost
            self._meta.update(closed=True, records_lost=self.lost, decisions_lost=self.decisions_lost)
            self._spool.write_meta(self._meta)
            warnings.warn(
                f"chuck: MLflow unreachable; {len(self._spool.read_metrics())} records kept in "
                f"{self._spool.directory} (send them later with chuck.tracking.logger.replay_spool)" + self._loss_text(),
                RuntimeWarning,
                stacklevel=2,
            )
        elif self.lost or self.decisions_lost:
            warnings.warn(
                f"chuck: MLflow run {self._run_id} is incomplete:{self._loss_text()}; tagged "
                f"chuck.records_lost{' and marked FAILED' if self._owns_run else ''}",
                RuntimeWarning,
                stacklevel=2,
            )

    def _loss_text(self) -> str:
        if not (self.lost or self.decisions_lost):
            return ""
        return (
            f" {self.lost} records and {self.decisions_lost} decision rows were lost "
            "(spool unwritable or over its bound while MLflow was unreachable)"
        )

    def _finish(self, deadline: float, outcome: dict[str, Any]) -> None:
        try:
            while not self.flush():
                if time.monotonic() >= deadline:
                    return
                time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
            _stop_system_metrics(self._system)
            with tempfile.TemporaryDirectory(prefix="chuck-table-") as tmp:
                with self._spool_lock:  # local work only: close() may need this lock to give up in time
                    if self._abandoned:
                        return
                    outcome["rendering_since"] = time.monotonic()
                    try:
                        rows = chain(self._spool.read_decisions(), list(self._table_backlog))
                        n, kept = build_decision_artifacts(rows, Path(tmp), self._meta, self._losses)
                    finally:
                        outcome["render_s"] = time.monotonic() - outcome.pop("rendering_since")
                if n:
                    with self._send_lock:
                        send_decision_artifacts(self.client, self._run_id, Path(tmp), kept, self._meta, self._owns_run)
                with self._spool_lock:
                    if self._abandoned:  # the table reached MLflow but close() already left it to replay_spool
                        return
                    self._spool.clear_decisions()
                    self._spool.clear_meta()
                    self._table_backlog = []
            lost = self.lost or self.decisions_lost
            if lost:
                self.client.set_tag(self._run_id, "chuck.records_lost", str(self.lost))
                self.client.set_tag(self._run_id, "chuck.decisions_lost", str(self.decisions_lost))
            if self._owns_run:
                self.client.set_terminated(self._run_id, status="FAILED" if lost else "FINISHED")
            outcome["done"] = True
        except Exception as exc:  # noqa: BLE001 - never raise into the user's code
            outcome["error"] = f"{type(exc).__name__}: {exc}"

    def __enter__(self) -> MLflowDecisionLogger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _closer(ref: weakref.ref[MLflowDecisionLogger]) -> Any:
    """What SIGTERM runs: close the logger if it is still there (the spool is on disk when it returns)."""

    def close() -> None:
        logger = ref()
        if logger is not None:
            logger.close()

    return close


def _render_seconds(outcome: dict[str, Any]) -> float:
    """Seconds the closer has spent drawing so far (finished, plus in progress)."""
    since = outcome.get("rendering_since")
    return outcome.get("render_s", 0.0) + (time.monotonic() - since if since is not None else 0.0)


#: Relative change of the lr that :class:`_StepTap` logs as a new value: a warm-up or an anneal that
#: moves the lr a little every step is drawn as stairs 0.5% high, at most ``ln(range) / 0.005`` points
#: (about 920 for a 100x anneal) however many steps it spans.
LR_LOG_TOLERANCE = 0.005


class _StepTap(Monitor):
    """Hands the logger, at the steps they belong to, through the monitor lifecycle (guardrail-skipped
    steps never reach it): the training loss (mean over ``every`` steps; ``0``: none), every validation
    loss, and the effective lr each base step ran with (param group 0's ``lr`` times chuck's multiplier
    for that step, warm-up and anneal included) as ``Training/lr``.

    MLflow draws a straight line between a metric's logged points. The lr changes as a step (at a
    decision, a guardrail's cut, each step of a warm-up), so it is logged where it changes: the value
    held until the step before, at that step, then the new value at its first step; an lr that held
    still costs nothing per step. The chart is then step-shaped, with each jump between the last step
    of the old lr and the first of the new one. An lr kept as a tensor on an accelerator is not read
    per step (each read would wait for the device): it is logged at each decision instead.

    It adds no statistic and no indicator: the policy's observation and the health report are unchanged.
    """

    name = "mlflow_losses"

    def __init__(self, logger: MLflowDecisionLogger, every: int, spec: Any, base_optimizer: Any) -> None:
        self.logger, self.every = logger, every
        self._spec, self._base = spec, base_optimizer
        self._sum, self._n = 0.0, 0
        self._lr: float | None = None  # the lr logged last, the step it was logged at, the last step it held
        self._logged_at = self._held_to = 0
        self.on_device = False  # the lr is a tensor on an accelerator: not read per step

    def on_step(self, record: StepRecord) -> None:
        if self.every > 0 and record.loss is not None:
            self._sum += record.loss
            self._n += 1
            if self._n >= self.every:
                self.logger.log_metric("Training/train_loss", self._sum / self._n, record.step)
                self._sum, self._n = 0.0, 0
        groups = self._base.param_groups
        lr = groups[0].get("lr") if groups else None
        if type(lr) is not float:
            if lr is None:
                return
            if getattr(getattr(lr, "device", None), "type", "cpu") != "cpu":
                self.on_device = True  # the decisions log the lr instead
                return
            lr = float(lr)
        value = lr * self._spec.step_lr_mult
        last = self._lr
        if last is not None and abs(value - last) <= LR_LOG_TOLERANCE * abs(last):
            self._held_to = record.step
            return
        self.end()
        self.logger.log_metric("Training/lr", value, record.step)
        self._lr, self._logged_at = value, record.step
        self._held_to = record.step

    def end(self) -> None:
        """Log the current lr at the last step it held, if it was logged earlier (the flat stretch's end)."""
        if self._lr is not None and self._held_to > self._logged_at:
            self.logger.log_metric("Training/lr", self._lr, self._held_to)
            self._logged_at = self._held_to

    def on_validation(self, step: int, value: float) -> None:
        if self.every > 0:
            self.logger.log_metric("Training/val_loss", value, step)

    def stats(self) -> dict[str, float]:
        return {}

    def indicators(self) -> list[Indicator]:
        return []


def run_parameters(opt: Any) -> dict[str, Any]:
    """What a run page should say about the run: model, base optimizer and its initial hyperparameters,
    policy and its card, decision interval and warm-up, chuck's version."""
    import chuck
    from chuck.monitors.architecture import ModelProfile

    out: dict[str, Any] = {
        "chuck.version": chuck.__version__,
        "chuck.policy": opt.policy_id,
        "chuck.interval": getattr(opt, "interval", None),
        "chuck.warmup_steps": getattr(getattr(opt, "action_spec", None), "warmup_steps", None),
        "chuck.total_steps": getattr(opt, "total_steps", None),
    }
    base = getattr(opt, "optimizer", None)
    if base is not None:
        out["optimizer"] = type(base).__name__
        group = base.param_groups[0] if base.param_groups else {}
        for k, v in group.items():
            # lr, betas, eps, weight_decay, momentum...; switches only when on (maximize, amsgrad, nesterov)
            if k != "params" and isinstance(v, (int, float, str, tuple)) and v is not False:
                out[f"optimizer.{k}"] = v
    model = getattr(opt, "model", None)
    if model is not None:
        n = sum(p.numel() for p in model.parameters())
        prof = ModelProfile.of(model)
        out["model"] = (
            f"{type(model).__name__}: {n:,} parameters, {prof.weight_layers} weight layers, "
            f"{prof.norm_layers} normalization layers, max width {prof.max_width}" + (", dropout" if prof.has_dropout else "")
        )
    pol = getattr(opt, "policy", None)
    card = getattr(pol, "card", None)
    if isinstance(card, dict):
        tr, ev = card.get("training") or {}, card.get("evaluation") or {}
        out["chuck.policy_card"] = (
            f"{card.get('name')} v{card.get('version')}: PPO on zoo tasks '{tr.get('tasks', '?')}', "
            f"{tr.get('timesteps', '?')} timesteps, observation v{(card.get('observation') or {}).get('version')}, "
            f"action v{(card.get('action') or {}).get('version')}"
            + (f", residual on {card['prior']}" if card.get("prior") else "")
            + (f"; held-out advantage over constant {ev['advantage']:+.3f}" if isinstance(ev.get("advantage"), float) else "")
        )
    elif pol is not None:
        out["chuck.policy_card"] = (type(pol).__doc__ or type(pol).__name__).strip().splitlines()[0]
    return out


def _start_system_metrics(run_id: str, tracking_uri: str, every: bool | float) -> Any:
    """MLflow's system-metrics monitor on this run (``None`` when off or unavailable)."""
    if every is False or every is None:
        return None
    try:
        import logging

        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        # no start/stop chatter; during an outage it stops on its first failed request, silently
        logging.getLogger("mlflow.system_metrics").setLevel(logging.ERROR)
        monitor = SystemMetricsMonitor(
            run_id, sampling_interval=10.0 if every is True else float(every), tracking_uri=tracking_uri
        )
        monitor.start()
        return monitor
    except Exception:  # noqa: BLE001 - psutil missing, an old MLflow: no system metrics, nothing else changes
        return None


def _prepare_rendering() -> None:
    """Load what drawing the timeline needs (matplotlib, its fonts), so that ``close()`` only draws."""
    with contextlib.suppress(Exception):  # no matplotlib: the table is logged without its picture
        from chuck.tracking.timeline import prepare

        prepare()


def _stop_system_metrics(monitor: Any) -> None:
    if monitor is not None:
        with contextlib.suppress(Exception):  # never raise from close()
            monitor.finish()


def _drain(q: queue.SimpleQueue) -> list:
    out = []
    while True:
        try:
            out.append(q.get_nowait())
        except queue.Empty:
            return out


def _spool_directory(spool_dir: str | Path | None) -> Path:
    """``spool_dir`` (default ``$CHUCK_HOME/spool``) if it can be created and written, else a
    temporary directory, with a warning: logging to a remote server must not need a writable
    CHUCK_HOME."""
    from chuck.core.home import chuck_home

    wanted: Path | str = spool_dir or "$CHUCK_HOME/spool"
    try:
        d = Path(spool_dir) if spool_dir else chuck_home() / "spool"
        wanted = d
        d.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=d, prefix=".probe-")  # catches read-only mounts, even for root
        os.close(fd)
        os.unlink(probe)
        return d
    except OSError as exc:
        tmp = Path(tempfile.mkdtemp(prefix="chuck-spool-"))
        warnings.warn(
            f"chuck: cannot use {wanted} for the MLflow spool ({exc}); using a temporary spool in {tmp} "
            "(set CHUCK_HOME or spool_dir to keep unsent records across reboots)",
            RuntimeWarning,
            stacklevel=3,
        )
        return tmp
