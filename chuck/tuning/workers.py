"""``chuck tune --n-workers N``: worker processes that share one study on a zoo task.

The study's mechanics (opening it, its heartbeat, the MLflow parent run) are :mod:`chuck.tuning.study`;
each worker runs :func:`chuck.tuning.cold_start.tune` on it with one torch thread.
"""

from __future__ import annotations

import multiprocessing
from typing import Any

import torch

from chuck.tuning.cold_start import tune, zoo_train_fn


def _zoo_worker(kwargs: dict[str, Any]) -> None:
    """One worker process of :func:`tune_zoo_in_workers`."""
    torch.set_num_threads(1)
    train_fn, _ = zoo_train_fn(
        kwargs.pop("task_id"),
        seed=kwargs.pop("instance_seed"),
        steps=kwargs.pop("steps"),
        optimizer=kwargs.get("optimizer", "AdamW"),
    )
    tune(train_fn, model=None, warm_start=False, history=False, progress=False, **kwargs)


def tune_zoo_in_workers(
    task_id: str,
    n_workers: int,
    *,
    seed: int = 0,
    steps: int | None = None,
    warm_start: bool = True,
    progress: bool = False,
    instance_seed: int | None = None,
    **kwargs: Any,
) -> Any:
    """``chuck tune --task ID --n-workers N``: ``N`` processes share one study on a zoo task.

    This process prepares the study (creates it, enqueues the warm start, starts the MLflow
    parent run), starts the workers (each runs :func:`chuck.tune` on the study with one torch
    thread) and, once they are done, returns the study's :class:`chuck.tuning.cold_start.TuneResult` and
    writes its history record. ``kwargs`` are :func:`chuck.tune`'s (``n_trials``, ``storage``,
    ``study_name``, ``optimizer``, ``eps_range``, ``tracking_uri``, ...). ``instance_seed`` draws
    the task instance every worker trains (default: ``seed``; :func:`chuck.tuning.cold_start.zoo_instance`).
    """
    if n_workers < 1:
        raise ValueError(f"n_workers must be >= 1, got {n_workers}")
    instance_seed = seed if instance_seed is None else instance_seed
    train_fn, model = zoo_train_fn(task_id, seed=instance_seed, steps=steps, optimizer=kwargs.get("optimizer", "AdamW"))
    # prepare: zero trials run here, everything the workers would otherwise race for is done once
    tune(train_fn, model=model, warm_start=warm_start, history=False, seed=seed, prepare_only=True, **kwargs)
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(
            target=_zoo_worker,
            name=f"chuck-tune-worker-{i}",
            # every worker the same task instance, its own sampler seed (else they propose alike)
            args=({**kwargs, "task_id": task_id, "steps": steps, "instance_seed": instance_seed, "seed": seed + 1 + i},),
        )
        for i in range(n_workers)
    ]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    finally:
        for p in procs:  # Ctrl-C: the workers stop too (their trials are retried on resume)
            if p.is_alive():
                p.terminate()
                p.join()
    failed = [p.name for p in procs if p.exitcode != 0]
    if failed:
        raise RuntimeError(
            f"tuning worker(s) {failed} failed (exit codes {[p.exitcode for p in procs]}); "
            "run the same command again to resume the study"
        )
    # the result: no new trials (the study has them all), the best one, the history record
    return tune(train_fn, model=model, warm_start=False, seed=seed, progress=progress, **kwargs)
