"""Held-out evaluation of meta-training: the exported policy asked as deployment asks it.

:func:`evaluate_policy` runs meta-environment episodes on fixed seeds, so every evaluation of a
run sees the same task instances, and asks each decision through the episode's own
:class:`~chuck.core.controller.Controller` (shape and finiteness checks, the out-of-distribution
fallback, hold on failure). :func:`log_learning_curve` writes the run's evaluations as a table
and a plot. Both serve :class:`chuck.metatrain.callbacks.HeldOutEvalCallback`.

This is not :func:`chuck.evaluation.evaluate`: that one trains fixed task instances for their
whole budget from a grid of starting lrs and scores final losses against an lr-sweep oracle;
this one scores an episode's return (log(L_start / L_end), the reward PPO maximizes) on the
instances the environment samples from a seed. The two share the worker pool's set-up.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from chuck.core.controller import PolicyAnswer


def evaluate_policy(
    policy: Any,
    tasks: str,
    episodes: int,
    *,
    interval: int = 20,
    budget_scale: float = 1.0,
    seed: int = 10_000,
    options: list[dict[str, Any]] | None = None,
    workers: int = 1,
    modules: Sequence[str] = (),
    shipped: Sequence[tuple[Any, str]] = (),
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Run ``episodes`` meta-env episodes with ``policy`` (a chuck Policy, an artifact's path, or None =
    hold) on fixed seeds.

    Each decision is asked the way deployment asks it: through the episode's own
    :meth:`chuck.core.controller.Controller.ask` (shape and finiteness checks, the out-of-distribution
    fallback to the heuristic, hold on any failure), on the controller's clock. Returns one row
    per episode, in seed order: task, seed, initial lr, return (= log(L_start/L_end), or -penalty
    if diverged).

    With ``workers`` > 1 the episodes run in that many processes with one torch thread each (the
    pool of ``chuck evaluate``); they import ``modules`` and register ``shipped`` ((task, split)
    pairs sent by value) first, as environment workers do. Every episode is fixed by its seed, so
    the rows do not depend on ``workers``.
    """
    jobs = [(seed + i, options[i] if options else None) for i in range(episodes)]
    bar = _progress_bar(len(jobs), "held-out evaluation") if progress else None
    rows: list[dict[str, Any]] = []
    try:
        if workers <= 1 or len(jobs) <= 1:
            for s, opts in jobs:
                rows.append(_episode(policy, tasks, interval, budget_scale, s, opts))
                if bar is not None:
                    bar.update(1)
            return rows
        from concurrent.futures import ProcessPoolExecutor

        from chuck.evaluation.schedule import worker_context

        ctx = worker_context()
        init = (list(modules), list(shipped))
        with ProcessPoolExecutor(
            max_workers=min(workers, len(jobs)), mp_context=ctx, initializer=_init_eval_worker, initargs=init
        ) as pool:
            futures = [pool.submit(_episode, policy, tasks, interval, budget_scale, s, opts) for s, opts in jobs]
            for fut in futures:  # in seed order
                rows.append(fut.result())
                if bar is not None:
                    bar.update(1)
        return rows
    finally:
        if bar is not None:
            bar.close()


def _progress_bar(total: int, desc: str) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is in chuck[all]
        return None
    return tqdm(total=total, desc=desc, unit="episode", dynamic_ncols=True, leave=False)


def _init_eval_worker(modules: list[str], shipped: list[tuple[Any, str]]) -> None:
    """Pool initializer: one torch thread, and the in-house tasks this process can resolve."""
    from chuck import zoo
    from chuck.evaluation.runs import init_worker

    init_worker()
    zoo.import_task_modules(modules)
    known = set(zoo.list_tasks("all"))
    for task, split in shipped:
        if task.id not in known:
            zoo.register_task(task, split=split)


def _episode(
    policy: Any, tasks: str, interval: int, budget_scale: float, seed: int, options: dict[str, Any] | None
) -> dict[str, Any]:
    """One evaluation episode (in this process or a worker); ``policy`` may be an artifact's path."""
    from chuck.envs import TrainingControlEnv

    if isinstance(policy, (str, Path)):
        # loaded here, in the worker, from the file: an object pickled by a training process started
        # before the code changed carries the old version's attributes into workers running the new
        # code (a session editing chuck while v6 trained: every held-out evaluation failed to ask)
        from chuck.core.loading import load_policy

        policy = load_policy(str(policy))

    # the policy's own warm-up, as ChuckOptimizer applies it in deployment (a residual on prior@10
    # carries its prior's); the env has no prior of its own here: the policy answers whole
    env = TrainingControlEnv(
        tasks=tasks,
        interval=interval,
        budget_scale=budget_scale,
        warmup=getattr(policy, "warmup", None),
        anneal=getattr(policy, "anneal", None),
    )
    hold = np.zeros(env.action_space.shape, dtype=np.float32)
    try:
        obs, _ = env.reset(seed=seed, options=options)
        if policy is not None:
            policy.reset()  # a run starts
        done, ret, info = False, 0.0, {}
        failed, first_failure = 0, ""
        while not done:
            if policy is None:
                action = hold
            else:
                answer = _ask_as_deployed(env, policy, obs)
                if answer.failed:  # asking raised or returned garbage: the controller held
                    failed, first_failure = failed + 1, first_failure or answer.reason
                action = answer.action.astype(np.float32)
            obs, r, done, _, info = env.step(action)
            ret += r
    finally:
        env.close()
    return {
        "failed_asks": failed,
        "first_failure": first_failure,
        "task_id": info["task_id"],
        "seed": seed,
        "optimizer": info["hyperparameters"]["optimizer"],
        "initial_lr": info["hyperparameters"]["lr"],
        "return": ret,
        "diverged": info["diverged"],
        "final_val_loss": info["final"]["final_val_loss"],
        "final_lr": info["final"]["lr"],
    }


def _ask_as_deployed(env: Any, policy: Any, obs: np.ndarray) -> PolicyAnswer:
    controller = env.opt.controller
    controller.policy = policy
    try:
        return controller.ask(obs)
    finally:
        controller.policy = None  # the env stays under external control


def log_learning_curve(mlflow: Any, out: Path, evaluations: list[dict[str, Any]]) -> None:
    """The evaluations as a table (``out/evaluations.csv``) and a learning-curve plot (``out/heldout_curve.png``),
    both logged to the active MLflow run under ``evaluation/``."""
    import csv

    table = out / "evaluations.csv"
    if evaluations:
        # a run resumed across chuck versions mixes rows with and without later columns (failed_asks):
        # every column any row has, in first-seen order, empty where a row lacks it
        fields = list(dict.fromkeys(k for e in evaluations for k in e))
        with open(table, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(evaluations)
        mlflow.log_artifact(str(table), artifact_path="evaluation")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return
    if evaluations:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ts = [e["timesteps"] for e in evaluations]
        ax.plot(ts, [e["heldout_return"] for e in evaluations], marker="o", label="learned policy")
        ax.axhline(evaluations[0]["constant_return"], color="gray", ls="--", label="constant (hold)")
        ax.set_xlabel("PPO timesteps (decisions)")
        ax.set_ylabel("held-out return = log(L_start/L_end)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "heldout_curve.png", dpi=120)
        plt.close(fig)
        mlflow.log_artifact(str(out / "heldout_curve.png"), artifact_path="evaluation")
