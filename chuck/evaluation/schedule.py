"""Scheduling: which runs an evaluation needs, in what order, and the resumable ``rows.csv``.

Each instance's oracle sweep is queued ahead of the main runs; as soon as an instance's sweep
is complete its harm probes are queued and its rows (which need the oracle for their regret)
are appended to ``rows.csv``, one flushed line per run. A rerun with the same output
directory skips every row already there, and the oracle cache skips finished sweep runs, so
an interrupted evaluation resumes where it stopped.

Runs that are the same training run are executed once: Prodigy ignores the starting lr, the
``adamw`` and ``cosine`` arms at a swept lr are the oracle's own runs, and a harm probe at a
starting lr is that main run.

Each instance carries its base optimizer and its lr grids (:mod:`chuck.evaluation.bases`): the
instances of one call may differ in both. Rows of a base other than AdamW have keys of their own
(the base is hashed into the settings part), and every row names its base (column ``base``);
a ``rows.csv`` written before that column existed is read as AdamW's and rewritten with it.
"""

from __future__ import annotations

import csv
import math
import multiprocessing
import os
import tempfile
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from chuck.evaluation.oracle import OracleCache, oracle_of, oracle_runs
from chuck.evaluation.runs import (
    FAILED_REGRET,
    RunSpec,
    effective_loss,
    effective_lr,
    init_worker,
    loss_ratio,
    run_id,
    run_one,
)

ROW_FIELDS = (
    "key",
    "kind",
    "task_id",
    "family",
    "domain",
    "seed",
    "arm",
    "lr",
    "steps",
    "final_loss",
    "initial_loss",
    "oracle_loss",
    "best_lr",
    "regret",
    "harm",
    "diverged",
    "error",
    "seconds",
    "base",
)
#: The columns of a ``rows.csv`` written before rows named their base optimizer (every one AdamW's).
LEGACY_ROW_FIELDS = ROW_FIELDS[:-1]


def worker_context() -> multiprocessing.context.BaseContext:
    """``forkserver`` where there is one (workers fork from a server that imported torch and the zoo
    once: seconds saved per worker), else ``spawn``. Never plain ``fork``: the parent may hold
    torch threads or an MLflow connection."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["chuck.evaluation.runs", "chuck.zoo"])
        return ctx
    return multiprocessing.get_context("spawn")


@dataclass
class Instance:
    """One (task, seed, base) of the evaluation: its steps, its oracle cache and the runs finished so far.

    ``lrs``, ``oracle_lrs`` and ``settings_hash`` left ``None`` are the :class:`Scheduler`'s.
    """

    task: Any
    seed: int
    steps: int
    cache: OracleCache
    ship_task: bool
    base: str = "AdamW"
    lrs: tuple[float, ...] | None = None
    oracle_lrs: tuple[float, ...] | None = None
    settings_hash: str | None = None
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    oracle_ready: bool = False
    oracle: float = math.nan
    best_lr: float | None = None
    buffered: list[tuple[str, str, float]] = field(default_factory=list)


def parse_row(raw: dict[str, str]) -> dict[str, Any] | None:
    """A row of rows.csv with its types back; ``None`` for a torn line (a run killed mid-write)."""
    if any(raw.get(k) is None for k in ROW_FIELDS) or not raw["base"]:
        return None
    try:
        row: dict[str, Any] = dict(raw)
        row["seed"], row["steps"] = int(raw["seed"]), int(raw["steps"])
        for k in ("lr", "final_loss", "initial_loss", "oracle_loss", "regret", "seconds"):
            row[k] = float(raw[k])
        row["best_lr"] = float(raw["best_lr"]) if raw["best_lr"] else None
        row["harm"] = float(raw["harm"]) if raw["harm"] else None
        row["diverged"] = raw["diverged"] == "True"
        return row
    except ValueError:
        return None


def upgrade_rows(path: Path, raws: list[dict[str, str]]) -> None:
    """Rewrite ``path`` with :data:`ROW_FIELDS` (atomically): the rows of an older ``rows.csv``, given
    their ``base``; a torn line (missing columns) is dropped, as reading drops it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".rows-", suffix=".csv")
    with os.fdopen(fd, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=ROW_FIELDS)
        writer.writeheader()
        writer.writerows({k: raw[k] for k in ROW_FIELDS} for raw in raws if parse_row(raw) is not None)
    os.replace(tmp, path)


class InlineExecutor(Executor):
    """``workers=1``: run in this process, one torch thread (as in the pool, so results match)."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future:
        fut: Future = Future()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            fut.set_result(fn(*args, **kwargs))  # run_one reports crashes in its result; Ctrl-C propagates
        finally:
            torch.set_num_threads(threads)
        return fut

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


class Scheduler:
    """One ``evaluate`` call's work: instances, the run queue, the rows file."""

    def __init__(
        self,
        arms: list[str],
        locations: dict[str, str],
        instances: list[Instance],
        lrs: list[float],
        oracle_lrs: tuple[float, ...],
        settings_hash: str,
        rows_path: Path,
        workers: int,
        progress: bool,
        executor: Any = None,
    ) -> None:
        self.arms, self.locations, self.instances = arms, locations, instances
        self.executor = executor  # given: runs go there (chuck.metatrain.ray_backend.RayExecutor); else a process pool
        self.lrs, self.oracle_lrs, self.settings_hash = lrs, oracle_lrs, settings_hash
        self.rows_path, self.workers, self.progress = rows_path, workers, progress
        for inst in instances:  # an instance without grids of its own gets the scheduler's
            inst.lrs = tuple(lrs) if inst.lrs is None else tuple(inst.lrs)
            inst.oracle_lrs = tuple(oracle_lrs) if inst.oracle_lrs is None else tuple(inst.oracle_lrs)
            inst.settings_hash = settings_hash if inst.settings_hash is None else inst.settings_hash
        #: Per instance, the run ids of its oracle sweep.
        self.oracle_ids = [{run_id(a, lr) for a, lr in oracle_runs(self._oracle_lrs(i))} for i in range(len(instances))]
        self.done_keys: set[str] = set()
        self.rows: list[dict[str, Any]] = []
        self.waiting: dict[tuple[int, str], list[tuple[str, str, float]]] = {}
        self.queue: deque[tuple[int, str, str, float]] = deque()
        self.planned: set[str] = set()
        self.executed = self.oracle_executed = 0
        self.warnings: list[str] = []
        #: The rows of an older rows.csv (without ``base``), rewritten with it when the run starts.
        self.legacy_rows: list[dict[str, str]] | None = None

    def _oracle_lrs(self, i: int) -> tuple[float, ...]:
        grid = self.instances[i].oracle_lrs
        assert grid is not None  # set in __init__
        return grid

    # -- rows ---------------------------------------------------------------------------------
    def key(self, kind: str, i: int, arm: str, lr: float) -> str:
        inst = self.instances[i]
        return f"{kind}|{inst.task.id}|{inst.seed}|{arm}|{lr!r}|{inst.steps}|{inst.settings_hash}"

    def load_rows(self) -> None:
        if not self.rows_path.exists():
            return
        with open(self.rows_path, newline="") as f:
            reader = csv.DictReader(f)
            header = None if reader.fieldnames is None else tuple(reader.fieldnames)
            if header is not None and header not in (ROW_FIELDS, LEGACY_ROW_FIELDS):
                raise ValueError(f"{self.rows_path} has other columns ({reader.fieldnames}): choose a new output directory")
            raws = list(reader)
        if header == LEGACY_ROW_FIELDS:  # every row of an older version is AdamW's (the file is upgraded in run())
            for raw in raws:
                if raw.get(LEGACY_ROW_FIELDS[-1]) is not None:  # a torn last line stays torn
                    raw["base"] = "AdamW"
            self.legacy_rows = raws
        for raw in raws:
            row = parse_row(raw)
            if row is not None and row["key"] not in self.done_keys:
                self.done_keys.add(row["key"])
                self.rows.append(row)

    def open_rows(self) -> None:
        if self.legacy_rows is not None:
            upgrade_rows(self.rows_path, self.legacy_rows)
            self.legacy_rows = None
        new = not self.rows_path.exists() or self.rows_path.stat().st_size == 0
        torn = not new and not self.rows_path.read_bytes().endswith(b"\n")
        self.file = open(self.rows_path, "a", newline="")  # noqa: SIM115 - open for the whole run, closed in run()
        if torn:
            self.file.write("\n")
        self.writer = csv.DictWriter(self.file, fieldnames=ROW_FIELDS)
        if new:
            self.writer.writeheader()
            self.file.flush()

    def write_row(self, kind: str, i: int, arm: str, lr: float) -> None:
        inst = self.instances[i]
        res = inst.results[run_id(arm, lr)]
        final = float(res["final_loss"])
        regret = loss_ratio(res, inst.oracle) if math.isfinite(inst.oracle) else FAILED_REGRET
        harm: float | str = ""
        if kind == "harm_probe" and inst.best_lr is not None:
            harm = loss_ratio(res, effective_loss(inst.results[run_id("adamw", inst.best_lr)]))
        row = {
            "key": self.key(kind, i, arm, lr),
            "kind": kind,
            "task_id": inst.task.id,
            "family": inst.task.family,
            "domain": inst.task.domain,
            "seed": inst.seed,
            "arm": arm,
            "lr": lr,
            "steps": inst.steps,
            "final_loss": final,
            "initial_loss": float(res["initial_loss"]),
            "oracle_loss": inst.oracle,
            "best_lr": "" if inst.best_lr is None else inst.best_lr,
            "regret": regret,
            "harm": harm,
            "diverged": bool(res["diverged"]),
            "error": res.get("error", ""),
            "seconds": res["seconds"],
            "base": inst.base,
        }
        self.writer.writerow(row)
        self.file.flush()
        parsed = parse_row({k: str(v) for k, v in row.items()})
        assert parsed is not None
        self.rows.append(parsed)
        self.done_keys.add(row["key"])

    # -- planning -------------------------------------------------------------------------------
    def need(self, kind: str, i: int, arm: str, lr: float) -> None:
        """Plan a row: write it when its run and its instance's oracle are ready, else queue the run."""
        key = self.key(kind, i, arm, lr)
        self.planned.add(key)
        if key in self.done_keys:
            return
        inst, rid = self.instances[i], run_id(arm, lr)
        if rid in inst.results:
            self.ready(kind, i, arm, lr)
            return
        if (i, rid) not in self.waiting:
            self.waiting[(i, rid)] = []
            self.enqueue(i, rid, arm, lr)
        self.waiting[(i, rid)].append((kind, arm, lr))

    def enqueue(self, i: int, rid: str, arm: str, lr: float) -> None:
        self.queue.append((i, rid, arm, lr))
        if self.bar is not None:
            self.bar.total += 1
            self.bar.refresh()

    def ready(self, kind: str, i: int, arm: str, lr: float) -> None:
        inst = self.instances[i]
        if inst.oracle_ready:
            self.write_row(kind, i, arm, lr)
        else:
            inst.buffered.append((kind, arm, lr))

    def oracle_check(self, i: int) -> None:
        """When instance ``i``'s sweep is complete: its oracle, its harm probes, its buffered rows."""
        inst = self.instances[i]
        if inst.oracle_ready or any(rid not in inst.results for rid in self.oracle_ids[i]):
            return
        inst.oracle, inst.best_lr = oracle_of(inst.results, self._oracle_lrs(i))
        inst.oracle_ready = True
        name = f"{inst.task.id} seed {inst.seed}" + ("" if inst.base == "AdamW" else f" ({inst.base})")
        if not math.isfinite(inst.oracle):
            self.warnings.append(f"{name}: every oracle run crashed; its runs count as regret {FAILED_REGRET:g}")
        if inst.best_lr is None:
            self.warnings.append(f"{name}: every constant-{inst.base} run crashed; no harm probes")
        else:
            for arm in self.arms:
                self.need("harm_probe", i, arm, inst.best_lr)
        for kind, arm, lr in inst.buffered:
            self.write_row(kind, i, arm, lr)
        inst.buffered.clear()

    def plan(self) -> None:
        for i, inst in enumerate(self.instances):
            inst.results.update(inst.cache.runs)
            for arm, lr in oracle_runs(self._oracle_lrs(i)):
                rid = run_id(arm, lr)
                if rid not in inst.results and (i, rid) not in self.waiting:
                    self.waiting[(i, rid)] = []
                    self.enqueue(i, rid, arm, lr)
        for i, inst in enumerate(self.instances):
            self.oracle_check(i)
            for lr in inst.lrs or ():
                for arm in self.arms:
                    self.need("main", i, arm, lr)

    # -- running --------------------------------------------------------------------------------
    def spec(self, i: int, arm: str, lr: float) -> RunSpec:
        inst = self.instances[i]
        # effective_lr: a Prodigy run is built the same whichever starting lr asked for it first
        return RunSpec(
            task_id=inst.task.id,
            seed=inst.seed,
            arm=arm,
            lr=effective_lr(arm, lr),
            steps=inst.steps,
            policy=self.locations.get(arm),
            task=inst.task if inst.ship_task else None,
            base=inst.base,
        )

    def finish(self, i: int, rid: str, result: dict[str, Any]) -> None:
        inst = self.instances[i]
        inst.results[rid] = result
        self.executed += 1
        if rid in self.oracle_ids[i]:
            self.oracle_executed += 1
            inst.cache.add(rid, result)
        for kind, arm, lr in self.waiting.pop((i, rid), []):
            self.ready(kind, i, arm, lr)
        self.oracle_check(i)

    def make_executor(self) -> Any:
        if self.executor is not None:
            return self.executor
        if self.workers == 1:
            return InlineExecutor()
        return ProcessPoolExecutor(max_workers=self.workers, mp_context=worker_context(), initializer=init_worker)

    def run(self) -> None:
        """Plan, then execute the queue (oracle sweeps first) until every planned row is written.

        A worker process that dies (killed, out of memory, segfault) breaks the pool and takes
        every run in flight with it: the pool is restarted and those runs are tried once more;
        a run that fails twice is recorded as crashed.
        """
        self.bar = None
        self.open_rows()
        executor, completed = None, False
        try:
            self.plan()
            if self.progress:
                try:
                    from tqdm.auto import tqdm

                    self.bar = tqdm(total=len(self.queue), desc="chuck evaluate", unit="run", dynamic_ncols=True)
                except ImportError:  # pragma: no cover - tqdm is in chuck[all]
                    pass
            executor = self.make_executor()
            in_flight: dict[Future, tuple[int, str, str, float]] = {}
            retried: set[tuple[int, str]] = set()
            broken = False
            while self.queue or in_flight:
                if broken and not in_flight:
                    executor.shutdown(wait=False, cancel_futures=True)
                    executor, broken = self.make_executor(), False
                while not broken and self.queue and len(in_flight) < 2 * self.workers:
                    job = self.queue.popleft()
                    i, _, arm, lr = job
                    try:
                        in_flight[executor.submit(run_one, self.spec(i, arm, lr))] = job
                    except BrokenProcessPool:
                        self.queue.appendleft(job)
                        broken = True
                if not in_flight:
                    continue
                done, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
                for fut in done:
                    job = in_flight.pop(fut)
                    try:
                        result = fut.result()
                    except Exception as exc:  # noqa: BLE001 - a worker that died takes its runs with it
                        broken = broken or isinstance(exc, BrokenProcessPool)
                        if job[:2] not in retried:
                            retried.add(job[:2])
                            self.queue.appendleft(job)
                            continue
                        result = {
                            "final_loss": math.nan,
                            "initial_loss": math.nan,
                            "loss_reference": math.nan,
                            "diverged": False,
                            "error": f"worker process died: {type(exc).__name__}: {exc}"[:500],
                            "seconds": 0.0,
                        }
                    self.finish(job[0], job[1], result)
                    if self.bar is not None:
                        self.bar.update(1)
            completed = True
        finally:
            if executor is not None:  # on Ctrl-C do not wait for the runs in flight: rerun to resume
                executor.shutdown(wait=completed, cancel_futures=True)
            self.file.close()
            if self.bar is not None:
                self.bar.close()
