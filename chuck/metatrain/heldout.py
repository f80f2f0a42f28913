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

import chuck.zoo as zoo
from chuck.core.controller import PolicyAnswer
from chuck.core.loading import load_policy
from chuck.envs import TrainingControlEnv
from chuck.evaluation.runs import init_worker
from chuck.evaluation.schedule import worker_context
from chuck.zoo.starting_lr import count_as_said

if TYPE_CHECKING:
    pass


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
    calibration_said: bool = False,
    pool: EvaluationPool | None = None,
) -> list[dict[str, Any]]:
    """Run ``episodes`` meta-env episodes with ``policy`` (a chuck Policy, an artifact's path, or None =
    hold) on fixed seeds.

    Each decision is asked the way deployment asks it: through the episode's own
    :meth:`chuck.core.controller.Controller.ask` (shape and finiteness checks, the out-of-distribution
    fallback to the heuristic, hold on any failure), on the controller's clock. Returns one row
    per episode, in seed order: task, seed, initial lr, return (= log(L_start/L_end), or -penalty
    if diverged), decisions and how many of them were out-of-distribution fallbacks. ``options[i]``
    goes to episode ``i``'s reset (``{"task_id": ...}`` picks its task).

    With ``workers`` > 1 the episodes run in that many processes with one torch thread each (the
    pool of ``chuck evaluate``); they import ``modules`` and register ``shipped`` ((task, split)
    pairs sent by value) first, as environment workers do. Every episode is fixed by its seed, so
    the rows do not depend on ``workers``. ``calibration_said``: the caller has said which tasks lack a
    best-lr entry (:func:`chuck.zoo.task.uncalibrated`), so the episodes do not say it again.
    ``pool``: workers kept across calls (a run's evaluations), used instead of starting ``workers`` new ones.
    """
    jobs = [(seed + i, options[i] if options else None) for i in range(episodes)]
    bar = _progress_bar(len(jobs), "held-out evaluation") if progress else None
    rows: list[dict[str, Any]] = []

    def gather(executor: Any) -> list[dict[str, Any]]:
        """Every episode on ``executor``, its rows in seed order."""
        futures = [
            executor.submit(_episode, policy, tasks, interval, budget_scale, s, opts, calibration_said) for s, opts in jobs
        ]
        for fut in futures:
            rows.append(fut.result())
            if bar is not None:
                bar.update(1)
        return rows

    try:
        if pool is not None and len(jobs) > 1:
            return gather(pool.executor())
        if workers <= 1 or len(jobs) <= 1:
            for s, opts in jobs:
                rows.append(_episode(policy, tasks, interval, budget_scale, s, opts, calibration_said))
                if bar is not None:
                    bar.update(1)
            return rows
        from concurrent.futures import ProcessPoolExecutor

        ctx = worker_context()
        init = (list(modules), _by_value(shipped))
        with ProcessPoolExecutor(
            max_workers=min(workers, len(jobs)), mp_context=ctx, initializer=_init_eval_worker, initargs=init
        ) as fresh:
            return gather(fresh)
    finally:
        if bar is not None:
            bar.close()


class EvaluationPool:
    """Worker processes kept for the evaluations of one run (one torch thread each).

    Each new pool starts interpreters that import torch and chuck and the run's task modules, seconds
    per evaluation on a busy machine; a run evaluates up to seven times. Started at the first use;
    :meth:`close` stops it.
    """

    def __init__(self, workers: int, modules: Sequence[str] = (), shipped: Sequence[tuple[Any, str]] = ()) -> None:
        self.workers, self.modules, self.shipped = max(1, workers), list(modules), list(shipped)
        self._executor: Any = None

    def executor(self) -> Any:
        if self._executor is None:
            from concurrent.futures import ProcessPoolExecutor

            self._executor = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=worker_context(),
                initializer=_init_eval_worker,
                initargs=(self.modules, _by_value(self.shipped)),
            )
        return self._executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


def _progress_bar(total: int, desc: str) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is in chuck[all]
        return None
    return tqdm(total=total, desc=desc, unit="episode", dynamic_ncols=True, leave=False)


def _by_value(shipped: Sequence[tuple[Any, str]]) -> bytes:
    """The in-house tasks as cloudpickle bytes: a task class defined in a function (a script's, a notebook's)
    reaches the workers, as it reaches the environment workers (SB3 sends those with cloudpickle too)."""
    import cloudpickle

    return cloudpickle.dumps(list(shipped))


def _init_eval_worker(modules: list[str], shipped: bytes | list[tuple[Any, str]]) -> None:
    """Pool initializer: one torch thread, and the in-house tasks this process can resolve."""
    import pickle

    init_worker()
    # bytes: made by this run's own process (_by_value)
    tasks: list[tuple[Any, str]] = pickle.loads(shipped) if isinstance(shipped, bytes) else list(shipped)  # noqa: S301
    zoo.import_task_modules(modules)
    known = set(zoo.list_tasks("all"))
    for task, split in tasks:
        if task.id not in known:
            zoo.register_task(task, split=split)


def _episode(
    policy: Any,
    tasks: str,
    interval: int,
    budget_scale: float,
    seed: int,
    options: dict[str, Any] | None,
    calibration_said: bool = False,
) -> dict[str, Any]:
    """One evaluation episode (in this process or a worker); ``policy`` may be an artifact's path."""

    if isinstance(policy, (str, Path)):
        # loaded here, in the worker, from the file: an object pickled by a training process started
        # before the code changed carries the old version's attributes into workers running the new
        # code (a session editing chuck while v6 trained: every held-out evaluation failed to ask)

        policy = load_policy(str(policy))

    # the policy's own warm-up, as ChuckOptimizer applies it in deployment (a residual on prior@10
    # carries its prior's); the env has no prior of its own here: the policy answers whole
    env = TrainingControlEnv(
        tasks=tasks,
        interval=interval,
        budget_scale=budget_scale,
        warmup=getattr(policy, "warmup", None),
        anneal=getattr(policy, "anneal", None),
        observation_version=getattr(policy, "observation_version", None),  # the features the policy reads
    )
    if calibration_said:
        count_as_said(env.tasks)
    hold = np.zeros(env.action_space.shape, dtype=np.float32)
    decisions = fallbacks = 0
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
                elif answer.out_of_distribution:  # outside the policy's training ranges: the fallback decided
                    fallbacks += 1
                action = answer.action.astype(np.float32)
            decisions += 1
            obs, r, done, _, info = env.step(action)
            ret += r
    finally:
        env.close()
    return {
        "failed_asks": failed,
        "first_failure": first_failure,
        "decisions": decisions,
        "fallbacks": fallbacks,
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
    # the env encodes the spec it was built for: the policy's own (see _episode), or the answer is garbage
    assert controller.obs_spec.version == policy.observation_version, "the env must encode the policy's observation spec"
    controller.policy = policy
    try:
        return controller.ask(obs)
    finally:
        controller.policy = None  # the env stays under external control


def log_learning_curve(mlflow: Any, out: Path, evaluations: list[dict[str, Any]], heldout: str = "") -> None:
    """The evaluations as a table (``out/evaluations.csv``) and a learning-curve plot (``out/heldout_curve.png``),
    both logged to the active MLflow run under ``evaluation/``.

    The plot has the policy's held-out return at every evaluation (the point at timestep 0 is the starting
    policy when fine-tuning), the starting policy's as a line (the reference arm: the curve must end above
    it for the retrained policy to beat its start) and the constant policy's; ``heldout`` names the
    instances in its title.
    """
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
        fig, ax = plt.subplots(figsize=(6.4, 3.8))
        ts = [e["timesteps"] for e in evaluations]
        ax.plot(ts, [e["heldout_return"] for e in evaluations], marker="o", label="policy being trained")
        start = next((e for e in evaluations if e.get("arm") == "start"), None)
        if start is not None:
            ax.axhline(start["heldout_return"], color="tab:green", ls="-.", label="starting policy (reference)")
            ax.plot([start["timesteps"]], [start["heldout_return"]], marker="s", color="tab:green", ls="none")
        ax.axhline(evaluations[0]["constant_return"], color="gray", ls="--", label="constant (hold)")
        ax.set_xlabel("PPO timesteps (decisions)")
        ax.set_ylabel("held-out return = log(L_start/L_end)")
        if heldout:
            ax.set_title(heldout, fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "heldout_curve.png", dpi=120)
        plt.close(fig)
        mlflow.log_artifact(str(out / "heldout_curve.png"), artifact_path="evaluation")
