"""One Optuna study, many workers: what lets ``chuck.tune`` run in several processes or on several machines.

Every worker runs :func:`chuck.tune` with the same ``study_name`` and ``storage`` (an Optuna RDB
URL: PostgreSQL across machines, SQLite on one). The pieces here keep that safe:

* **Heartbeats** (:func:`open_study`): a running trial's worker writes a heartbeat every
  ``heartbeat_interval`` seconds. A trial whose worker died (killed, out of memory, machine
  lost) stops beating; after ``grace_period`` it is marked failed -- by exactly one worker,
  the storage arbitrates -- and ``RetryFailedTrialCallback`` enqueues it again with the same
  parameters. So an interrupted study loses no trial: resuming it retries the dead ones.
* **The trial count** (:func:`optimize_until`): a worker starts a trial only while
  finished + running + queued trials are fewer than ``n_trials``, and once they are not, it
  waits for the others' trials to finish (or go stale, then runs their retries) instead of
  adding more. A trial killed before its first heartbeat gets one from a waiting worker, so
  that it goes stale too. Trials are numbered by the storage, so none is run twice. Two workers that check
  at the same moment can both start the last trial: a study ends with at most
  ``n_workers - 1`` trials more than asked, never fewer.
* **Warm starts** are enqueued with ``skip_if_exists``, so workers starting together do not
  queue the history's suggestions twice; :func:`claim_parent_run` makes workers agree on one
  MLflow parent run.
* :func:`chuck.tuning.workers.tune_zoo_in_workers` (``chuck tune --n-workers N``) prepares the study in the calling
  process (warm starts, MLflow parent run: nothing to race for) and then starts ``N`` worker
  processes on it.
"""

from __future__ import annotations

import datetime
import time
import warnings
from typing import Any

#: Seconds between a running trial's heartbeats; after three missed ones its worker is dead.
HEARTBEAT_INTERVAL = 10
GRACE_PERIOD = 3 * HEARTBEAT_INTERVAL
#: Retries of a trial whose worker died before it finished.
MAX_RETRY = 2


def open_study(
    optuna: Any,
    study_name: str,
    storage: str,
    *,
    seed: int,
    n_startup_trials: int,
    heartbeat_interval: int = HEARTBEAT_INTERVAL,
    grace_period: int | None = None,
) -> Any:
    """Create or load the study, on storage with heartbeats and retries of dead trials."""
    grace = grace_period if grace_period is not None else 3 * heartbeat_interval
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna since 2.8; they are what we need
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        rdb = optuna.storages.RDBStorage(
            storage,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace,
            heartbeat_stale_trial_callback=retry_callback(optuna)(max_retry=MAX_RETRY),
            engine_kwargs={"pool_pre_ping": True} if not storage.startswith("sqlite") else None,
        )
    return optuna.create_study(
        study_name=study_name,
        storage=rdb,
        load_if_exists=True,
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials, n_warmup_steps=1),
    )


def retry_callback(optuna: Any) -> Any:
    """Optuna's callback that re-enqueues a dead worker's trial (renamed in Optuna 4.9)."""
    return getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback


def counts(optuna: Any, study: Any) -> dict[str, int]:
    """Trials by state: ``finished`` (complete or pruned), ``running``, ``waiting`` (queued), ``failed``."""
    states = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    return {
        "finished": sum(t.state in (states.COMPLETE, states.PRUNED) for t in trials),
        "running": sum(t.state == states.RUNNING for t in trials),
        "waiting": sum(t.state == states.WAITING for t in trials),
        "failed": sum(t.state == states.FAIL for t in trials),
    }


def optimize_until(
    optuna: Any,
    study: Any,
    objective: Any,
    n_trials: int,
    *,
    timeout: float | None = None,
    catch: tuple[type[Exception], ...] = (),
    poll: float = 1.0,
    progress: bool = False,
) -> int:
    """Run trials, one at a time, until the study has ``n_trials`` finished ones. Returns the trials run here.

    Waits while the missing trials are running elsewhere; a trial whose worker died is failed
    once its heartbeat is stale, and retried. Optuna never finds a trial stale that has no
    heartbeat at all (its worker died between creating it and its first beat, or it was run
    without heartbeats): a waiting worker gives every running trial older than the grace period
    one heartbeat, so that such a trial goes stale one grace period later, while a live trial's
    own heartbeats keep it fresh.
    """
    from optuna.storages import fail_stale_trials

    storage = study._storage  # noqa: SLF001 - the heartbeat API lives on the storage, as in fail_stale_trials
    grace = getattr(storage, "grace_period", None) or GRACE_PERIOD
    deadline = None if timeout is None else time.monotonic() + timeout
    touched: set[int] = set()
    ran = failed_in_a_row = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_trials, desc=f"study {study.study_name}", unit="trial")
    while deadline is None or time.monotonic() < deadline:
        c = counts(optuna, study)
        if bar is not None:
            bar.update(min(c["finished"], n_trials) - bar.n)
        if c["finished"] >= n_trials:
            break
        if c["waiting"] == 0 and c["finished"] + c["running"] >= n_trials:
            _touch_old_running(optuna, study, storage, grace, touched)
            fail_stale_trials(study)  # dead workers' trials -> FAIL, their retries queued
            time.sleep(poll)
            continue
        study.optimize(objective, n_trials=1, catch=catch)
        ran += 1
        failed_in_a_row = failed_in_a_row + 1 if counts(optuna, study)["failed"] > c["failed"] else 0
        if failed_in_a_row >= max(3, n_trials):  # every trial fails (a caught error): stop, as optimize(n_trials) did
            warnings.warn(f"chuck.tune: the last {failed_in_a_row} trials failed; stopping", RuntimeWarning, stacklevel=2)
            break
    if bar is not None:
        bar.close()
    return ran


def _touch_old_running(optuna: Any, study: Any, storage: Any, grace: float, touched: set[int]) -> None:
    """One heartbeat for each running trial started more than ``grace`` seconds ago (see :func:`optimize_until`)."""
    record = getattr(storage, "record_heartbeat", None)
    if record is None:
        return
    now = datetime.datetime.now()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        start = t.datetime_start
        if t._trial_id in touched or start is None or (now - start).total_seconds() < grace:  # noqa: SLF001
            continue
        record(t._trial_id)  # noqa: SLF001
        touched.add(t._trial_id)  # noqa: SLF001


def claim_parent_run(mlflow: Any, study: Any, run_name: str) -> tuple[Any, bool]:
    """The study's one MLflow parent run, started (resumed) in this process: ``(run, created_here)``.

    The first worker creates it and records its id in the study; a worker that raced it and
    lost deletes its own and joins the recorded one.
    """
    parent_id = study.user_attrs.get("mlflow_run_id")
    if parent_id is not None:
        return mlflow.start_run(run_id=parent_id), False
    run = mlflow.start_run(run_name=run_name)
    study.set_user_attr("mlflow_run_id", run.info.run_id)
    recorded = study.user_attrs.get("mlflow_run_id")  # read back from the storage
    if recorded != run.info.run_id:  # another worker recorded its run after ours: join that one
        mlflow.end_run()
        mlflow.delete_run(run.info.run_id)
        return mlflow.start_run(run_id=recorded), False
    return run, True
