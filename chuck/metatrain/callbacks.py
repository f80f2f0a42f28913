"""stable-baselines3 callbacks and logger output of meta-training (SB3's callback style).

Imported by :func:`chuck.metatrain.train.train_policy` only: stable-baselines3 is an optional
dependency (``chuck[all]``), and ``chuck --help`` must not load it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import KVWriter


class MLflowKVWriter(KVWriter):
    """An SB3 logger output that sends every numeric rollout metric to the active MLflow run."""

    def __init__(self, mlflow: Any) -> None:
        self.mlflow = mlflow

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0) -> None:
        metrics = {
            k.replace("/", "."): float(v)
            for k, v in key_values.items()
            if isinstance(v, (int, float, np.floating, np.integer)) and math.isfinite(float(v))
        }
        if metrics:
            self.mlflow.log_metrics(metrics, step=int(step))

    def close(self) -> None:
        pass


class ObservationRangeCallback(BaseCallback):
    """Tracks, in place, the range of raw observations seen in training (the card's OOD reference)."""

    def __init__(self, low: np.ndarray, high: np.ndarray) -> None:
        super().__init__()
        self.low, self.high = low, high

    def _on_step(self) -> bool:
        raw = self.training_env.get_original_obs()  # type: ignore[attr-defined]
        np.minimum(self.low, raw.min(0), out=self.low)
        np.maximum(self.high, raw.max(0), out=self.high)
        return True


class TaskEpisodesCallback(BaseCallback):
    """Counts, in place, the finished training episodes of each task and sums their returns.

    The spec says what was asked for; these counts say what the policy was trained on (a task
    that never came up, or one whose episodes all diverged, shows here). ``VecMonitor`` puts the
    finished episode's return in the ``episode`` entry of the step's info, beside the env's
    ``task_id``; ``stats`` maps task id to ``{"episodes": n, "return_sum": s}``.
    """

    def __init__(self, stats: dict[str, dict[str, float]]) -> None:
        super().__init__()
        self.stats = stats

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", ()):
            episode, task_id = info.get("episode"), info.get("task_id")
            if episode is None or task_id is None:
                continue
            row = self.stats.setdefault(str(task_id), {"episodes": 0, "return_sum": 0.0})
            row["episodes"] += 1
            row["return_sum"] += float(episode["r"])
        return True


def task_episode_summary(stats: dict[str, dict[str, float]], task_ids: list[str]) -> dict[str, dict[str, Any]]:
    """``{task_id: {"episodes": n, "mean_return": r}}`` for every task trained on, ``None`` where it got no episode."""
    out: dict[str, dict[str, Any]] = {}
    for task_id in list(task_ids) + sorted(set(stats) - set(task_ids)):
        row = stats.get(task_id, {"episodes": 0, "return_sum": 0.0})
        n = int(row["episodes"])
        out[task_id] = {"episodes": n, "mean_return": float(row["return_sum"]) / n if n else None}
    return out


class EveryCallback(BaseCallback):
    """Calls ``fn()`` every ``every`` timesteps (0: never); evaluation and checkpoints use it."""

    def __init__(self, every: int, fn: Callable[[], Any]) -> None:
        super().__init__()
        self.every, self.fn, self.last = every, fn, 0

    def _on_training_start(self) -> None:
        self.last = int(self.model.num_timesteps)

    def _on_step(self) -> bool:
        t = int(self.model.num_timesteps)
        if self.every and t - self.last >= self.every:
            self.last = t
            self.fn()
        return True


class ProgressCallback(BaseCallback):
    """A tqdm bar over decisions; ``status()`` gives its postfix (the latest held-out return)."""

    def __init__(self, total: int, status: Callable[[], dict[str, str]]) -> None:
        super().__init__()
        self.total, self.status = total, status
        self.bar: Any = None

    def _on_training_start(self) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.total, initial=int(self.model.num_timesteps), desc="meta-training", unit="decision")

    def _on_step(self) -> bool:
        self.bar.update(int(self.model.num_timesteps) - self.bar.n)
        self.bar.set_postfix(self.status(), refresh=False)
        return True

    def _on_training_end(self) -> None:
        self.bar.close()
