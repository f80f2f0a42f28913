"""stable-baselines3 callbacks and logger output of meta-training.

:func:`chuck.metatrain.train.train_policy` chains them in SB3's ``CallbackList``: the observation
range and the per-task episode counts on every step; every ``eval_every`` and
``checkpoint_every`` timesteps (:class:`EveryNTimestepsSinceStart`), the held-out evaluation of
the exported policy and a resumable checkpoint; a progress bar. They share one
:class:`TrainingState`, which the checkpoint saves.

Imported by :func:`chuck.metatrain.train.train_policy` only: stable-baselines3 is an optional
dependency (``chuck[all]``), and ``chuck --help`` must not load it.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, EveryNTimesteps
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


@dataclass
class TrainingState:
    """What a meta-training run accumulates beside PPO's weights and VecNormalize's statistics.

    Saved in the checkpoint's ``state.json`` (:class:`ResumableCheckpointCallback`), so that a rerun
    continues the same MLflow run with the same observation range, evaluations and episode counts.
    The callbacks fill it in place.
    """

    task_ids: list[str]
    """The resolved training tasks (not saved: resolved again by every run)."""
    obs_low: np.ndarray
    """Smallest raw value of each observation seen in training (the card's out-of-distribution reference)."""
    obs_high: np.ndarray
    """Largest raw value of each observation seen in training."""
    run_id: str | None = None
    """The MLflow run; ``None`` until one is started."""
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    """One row per held-out evaluation, in timestep order."""
    task_episodes: dict[str, dict[str, float]] = field(default_factory=dict)
    """Finished training episodes per task: ``{task_id: {"episodes": n, "return_sum": s}}``."""
    resumed: bool = False
    """Whether this run continues a checkpoint (not saved)."""

    @classmethod
    def load(cls, path: Path, task_ids: list[str], n_obs: int) -> TrainingState:
        """The state saved at ``path``, or a fresh one (``resumed`` false) where there is none."""
        saved = json.loads(path.read_text()) if path.exists() else {}
        return cls(
            task_ids=task_ids,
            obs_low=np.asarray(saved.get("obs_low", [np.inf] * n_obs), dtype=np.float64),
            obs_high=np.asarray(saved.get("obs_high", [-np.inf] * n_obs), dtype=np.float64),
            run_id=saved.get("run_id"),
            evaluations=list(saved.get("evaluations", [])),
            task_episodes=dict(saved.get("task_episodes", {})),
            resumed=bool(saved),
        )

    def episodes_per_task(self) -> dict[str, dict[str, Any]]:
        """``{task_id: {"episodes": n, "mean_return": r}}``: see :func:`task_episode_summary`."""
        return task_episode_summary(self.task_episodes, self.task_ids)


class EveryNTimestepsSinceStart(EveryNTimesteps):
    """SB3's :class:`~stable_baselines3.common.callbacks.EveryNTimesteps`, counting from the timestep
    training (re)starts at.

    SB3's counts from 0, so a run resumed at timestep T > n would fire at its first step, off the
    run's every-n grid; this one fires n timesteps after the resume, as an uninterrupted run would.
    """

    def _on_training_start(self) -> None:
        self.last_time_trigger = int(self.model.num_timesteps)
        super()._on_training_start()


class ResumableCheckpointCallback(BaseCallback):
    """Saves what a rerun with the same output resumes from, into ``folder``.

    ``ppo.zip`` (SB3's own save), ``vecnormalize.pkl`` (the observation statistics: a
    training-internal pickle, never shipped; the exported card holds them as numbers) and
    ``state.json`` (:class:`TrainingState`). Fired by :class:`EveryNTimestepsSinceStart`;
    :meth:`save` is also called when training ends.
    """

    def __init__(self, folder: Path, state: TrainingState) -> None:
        super().__init__()
        self.folder, self.state = folder, state

    def save(self, model: BaseAlgorithm) -> None:
        venv = model.get_vec_normalize_env()
        assert venv is not None, "meta-training normalizes observations with VecNormalize"
        self.folder.mkdir(parents=True, exist_ok=True)
        model.save(str(self.folder / "ppo.zip"))
        venv.save(str(self.folder / "vecnormalize.pkl"))
        state = self.state
        saved = {
            "run_id": state.run_id,
            "timesteps": int(model.num_timesteps),
            "obs_low": state.obs_low.tolist(),
            "obs_high": state.obs_high.tolist(),
            "evaluations": state.evaluations,
            "task_episodes": state.task_episodes,
        }
        (self.folder / "state.json").write_text(json.dumps(saved))

    def _on_step(self) -> bool:
        self.save(self.model)
        return True


class HeldOutEvalCallback(BaseCallback):
    """Exports the policy being trained and evaluates the export on the held-out tasks.

    What is evaluated is what ships: the torch-only artifact (:func:`chuck.policies.export.export_sb3`),
    loaded back, asked as deployment asks it (:func:`chuck.metatrain.heldout.evaluate_policy`), not
    SB3's ``predict``. Every evaluated export is kept under ``snapshots/`` (checkpoint selection
    compares them later with ``chuck evaluate``, on many more instances than these few episodes).
    The constant (hold) policy is evaluated once, when the callback is made, on the same instances:
    each evaluation's ``advantage`` is the policy's mean return over it.

    Fired by :class:`EveryNTimestepsSinceStart`, except at ``total_timesteps``, where the final
    evaluation (:meth:`evaluate_unless_done`) follows at once: one evaluation there, not two.

    Args:
        run_episodes: ``run_episodes(policy)`` gives one row per held-out episode (``policy`` an
            artifact's path, or ``None`` for hold); the same instances on every call.
        card: ``card(model)`` is the card of the policy ``model`` exports, for its snapshot.
        snapshots: the folder of the snapshots, one sub-folder per timestep.
        state: the run's state; each evaluation is appended to its ``evaluations``.
        mlflow: the ``mlflow`` module, with the run active: ``eval.*`` and ``task.*`` metrics.
        total_timesteps: the run's budget.
    """

    def __init__(
        self,
        run_episodes: Callable[[Any], list[dict[str, Any]]],
        card: Callable[[BaseAlgorithm], dict[str, Any]],
        snapshots: Path,
        state: TrainingState,
        mlflow: Any,
        total_timesteps: int,
    ) -> None:
        super().__init__()
        self.run_episodes, self.card, self.snapshots = run_episodes, card, snapshots
        self.state, self.mlflow, self.total_timesteps = state, mlflow, total_timesteps
        self.baseline_rows = run_episodes(None)
        self.baseline = float(np.mean([r["return"] for r in self.baseline_rows]))

    def evaluate(self, model: BaseAlgorithm) -> dict[str, Any]:
        """Export ``model``'s policy, evaluate it, log the result and append it to the state's evaluations."""
        from chuck.policies.artifact import load_artifact
        from chuck.policies.export import export_sb3

        timesteps = int(model.num_timesteps)
        venv = model.get_vec_normalize_env()
        snap = self.snapshots / f"{timesteps:08d}"
        export_sb3(model, venv, snap, self.card(model))
        load_artifact(snap)  # evaluate what ships, the torch-only export: it must load
        rows = self.run_episodes(str(snap))  # by path: each worker loads the file with the code it runs
        mean = float(np.mean([r["return"] for r in rows]))
        result = {
            "timesteps": timesteps,
            "heldout_return": mean,
            "constant_return": self.baseline,
            "advantage": mean - self.baseline,
            "diverged": float(np.mean([r["diverged"] for r in rows])),
            # decisions where asking the policy failed and the controller held: a broken policy
            # scores exactly as "hold" does, so say so rather than report its return silently
            "failed_asks": float(sum(r["failed_asks"] for r in rows)),
        }
        failures = [r["first_failure"] for r in rows if r["failed_asks"]]
        if failures:
            warnings.warn(
                f"held-out evaluation at {timesteps} timesteps: asking the policy failed in "
                f"{int(result['failed_asks'])} decisions (the controller held); first: {failures[0]}",
                RuntimeWarning,
                stacklevel=2,
            )
        metrics = {f"eval.{k}": v for k, v in result.items() if k != "timesteps"}
        self.mlflow.log_metrics(metrics, step=timesteps)
        per_task = {}
        for task_id, row in self.state.episodes_per_task().items():
            per_task[f"task.{task_id}.episodes"] = float(row["episodes"])
            if row["mean_return"] is not None:
                per_task[f"task.{task_id}.mean_return"] = float(row["mean_return"])
        self.mlflow.log_metrics(per_task, step=timesteps)
        self.state.evaluations.append(result)
        return result

    def evaluate_unless_done(self, model: BaseAlgorithm) -> bool:
        """Evaluate ``model`` unless the latest evaluation is at its timesteps (a finished run resumed
        to register it after a crash); whether it evaluated."""
        evaluations = self.state.evaluations
        if evaluations and evaluations[-1]["timesteps"] == int(model.num_timesteps):
            return False
        self.evaluate(model)
        return True

    def status(self) -> dict[str, str]:
        """The latest held-out return and the constant policy's, for the progress bar."""
        evaluations = self.state.evaluations
        return {
            "heldout": f"{evaluations[-1]['heldout_return']:+.3f}" if evaluations else "-",
            "constant": f"{self.baseline:+.3f}",
        }

    def _on_step(self) -> bool:
        if self.num_timesteps < self.total_timesteps:
            self.evaluate(self.model)
        return True


class ProgressCallback(BaseCallback):
    """A tqdm bar over the run's decisions; ``status()`` gives its postfix (the latest held-out return).

    Not SB3's ``ProgressBarCallback``: that one needs rich, which ``chuck[all]`` does not install,
    draws a rich bar that shows no postfix, and counts only the timesteps of this session where
    a resumed run's bar should start at the timesteps it holds.
    """

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
