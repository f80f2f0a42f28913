"""stable-baselines3 callbacks and logger output of meta-training.

:func:`chuck.metatrain.train.train_policy` chains them in SB3's ``CallbackList``: the observation
range and the per-task episode counts on every step; the held-out evaluation of the exported
policy between PPO updates, at the timesteps :func:`chuck.cli.config.evaluation_timesteps` plans;
every ``checkpoint_every`` timesteps (:class:`EveryNTimestepsSinceStart`) a resumable checkpoint;
a progress bar. They share one :class:`TrainingState`, which the checkpoint saves.

Imported by :func:`chuck.metatrain.train.train_policy` only: stable-baselines3 is an optional
dependency (``chuck[all]``), and ``chuck --help`` must not load it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, EveryNTimesteps
from stable_baselines3.common.logger import KVWriter

from chuck.core.observation import FEATURE_SETS, ObservationSpec
from chuck.policies.artifact import load_artifact
from chuck.policies.export import export_sb3


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
    observation_version: str
    """The observation spec the run trains on (a resumed run keeps it)."""
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
    baseline_rows: list[dict[str, Any]] = field(default_factory=list)
    """The constant (hold) policy's held-out episodes (evaluated once: the instances are fixed by their seeds)."""
    reference_rows: list[dict[str, Any]] = field(default_factory=list)
    """The starting policy's held-out episodes when fine-tuning (the reference arm), else empty."""
    last_rows: list[dict[str, Any]] = field(default_factory=list)
    """The held-out episodes of the latest evaluation of the policy being trained."""
    comparison: dict[str, Any] = field(default_factory=dict)
    """The final policy against the reference arm and the constant one, paired
    (:func:`chuck.metatrain.comparison.compare_arms`); empty until the final evaluation."""

    @classmethod
    def load(cls, path: Path, task_ids: list[str], spec: ObservationSpec) -> TrainingState:
        """The state saved at ``path``, or a fresh one (``resumed`` false) where there is none, for a run on
        observation spec ``spec``."""
        saved = json.loads(path.read_text()) if path.exists() else {}
        n_obs = len(spec.names)
        return cls(
            task_ids=task_ids,
            observation_version=spec.version,
            obs_low=np.asarray(saved.get("obs_low", [np.inf] * n_obs), dtype=np.float64),
            obs_high=np.asarray(saved.get("obs_high", [-np.inf] * n_obs), dtype=np.float64),
            run_id=saved.get("run_id"),
            evaluations=list(saved.get("evaluations", [])),
            task_episodes=dict(saved.get("task_episodes", {})),
            resumed=bool(saved),
            baseline_rows=list(saved.get("baseline_rows", [])),
            reference_rows=list(saved.get("reference_rows", [])),
            last_rows=list(saved.get("last_rows", [])),
            comparison=dict(saved.get("comparison", {})),
        )

    @staticmethod
    def saved_observation_version(path: Path) -> str | None:
        """The observation spec of the run saved at ``path``; ``None`` where there is no run, or where its
        state predates the recorded version and its number of features does not tell (only spec v2 has 40)."""
        if not path.exists():
            return None
        saved = json.loads(path.read_text())
        if "observation_version" in saved:
            return str(saved["observation_version"])
        return "2" if len(saved.get("obs_low", [])) == len(FEATURE_SETS["2"]) else None

    def widen_ranges(self, low: np.ndarray | None, high: np.ndarray | None) -> None:
        """Make the observation range the union of what it holds and ``[low, high]`` (a starting policy's)."""
        if low is not None and len(low) == len(self.obs_low):
            np.minimum(self.obs_low, np.asarray(low, dtype=np.float64), out=self.obs_low)
        if high is not None and len(high) == len(self.obs_high):
            np.maximum(self.obs_high, np.asarray(high, dtype=np.float64), out=self.obs_high)

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


#: What a meta-training checkpoint holds (in the order :class:`ResumableCheckpointCallback` writes them).
CHECKPOINT_FILES = ("ppo.zip", "vecnormalize.pkl", "state.json")


class ResumableCheckpointCallback(BaseCallback):
    """Saves what a rerun with the same output resumes from, into ``folder``.

    ``ppo.zip`` (SB3's own save), ``vecnormalize.pkl`` (the observation statistics: a
    training-internal pickle, never shipped; the exported card holds them as numbers) and
    ``state.json`` (:class:`TrainingState`). Fired by :class:`EveryNTimestepsSinceStart`;
    :meth:`save` is also called when training ends.

    A long run is stopped when its machine or session ends, at any moment, also in the middle of a
    save: the three files are written in full (and flushed to disk) into ``folder/.saving`` first and
    then moved over the previous ones (a rename within one file system replaces a file whole), so a
    save cut short leaves the previous checkpoint as it was; only a cut between the three renames,
    microseconds apart, would mix two saves.
    """

    def __init__(self, folder: Path, state: TrainingState) -> None:
        super().__init__()
        self.folder, self.state = folder, state

    def save(self, model: BaseAlgorithm) -> None:
        venv = model.get_vec_normalize_env()
        assert venv is not None, "meta-training normalizes observations with VecNormalize"
        staging = self.folder / ".saving"
        staging.mkdir(parents=True, exist_ok=True)
        model.save(str(staging / "ppo.zip"))
        venv.save(str(staging / "vecnormalize.pkl"))
        state = self.state
        saved = {
            "run_id": state.run_id,
            "observation_version": state.observation_version,
            "timesteps": int(model.num_timesteps),
            "obs_low": state.obs_low.tolist(),
            "obs_high": state.obs_high.tolist(),
            "evaluations": state.evaluations,
            "task_episodes": state.task_episodes,
            "baseline_rows": state.baseline_rows,
            "reference_rows": state.reference_rows,
            "last_rows": state.last_rows,
            "comparison": state.comparison,
        }
        (staging / "state.json").write_text(json.dumps(saved))
        for name in CHECKPOINT_FILES:  # on disk before any rename, so a rename never points at unwritten data
            with open(staging / name, "rb") as f:
                os.fsync(f.fileno())
        for name in CHECKPOINT_FILES:  # all written: now replace the previous checkpoint, file by file
            os.replace(staging / name, self.folder / name)
        shutil.rmtree(staging, ignore_errors=True)  # a stray file there must not stop training after a good save

    def _on_step(self) -> bool:
        self.save(self.model)
        return True


class HeldOutEvalCallback(BaseCallback):
    """Exports the policy being trained and evaluates the export on the held-out instances.

    What is evaluated is what ships: the torch-only artifact (:func:`chuck.policies.export.export_sb3`),
    loaded back, asked as deployment asks it (:func:`chuck.metatrain.heldout.evaluate_policy`), not
    SB3's ``predict``. Every evaluated export is kept under ``snapshots/`` (checkpoint selection
    compares them later with ``chuck evaluate``, on many more instances than these few episodes).

    The arms, on the same instances: the constant (hold) policy and, when fine-tuning, the starting
    policy (``reference``), each evaluated once (their rows are kept in the state, so a resumed run does
    not run them again); the starting policy is also the learning curve's point at timestep 0. Each
    evaluation row holds the policy's mean return, the constant's, their difference (``advantage``), the
    reference's mean return and the policy's difference to it (``vs_start``, a mean of paired differences).

    An evaluation runs at the start of the first rollout at or past each timestep of ``at``, so that it
    sits between two PPO updates and is labelled with the timesteps its policy was trained on; the final
    one follows training (:meth:`evaluate_unless_done`).

    Args:
        run_episodes: ``run_episodes(policy)`` gives one row per held-out episode (``policy`` an
            artifact's path, or ``None`` for hold); the same instances on every call.
        card: ``card(model)`` is the card of the policy ``model`` exports, for its snapshot.
        snapshots: the folder of the snapshots, one sub-folder per timestep.
        state: the run's state; each evaluation is appended to its ``evaluations``.
        mlflow: the ``mlflow`` module, with the run active: ``eval.*`` and ``task.*`` metrics.
        at: the timesteps to evaluate at during training (:func:`chuck.cli.config.evaluation_timesteps`).
        reference: the starting policy's artifact path when fine-tuning, else ``None``.
    """

    def __init__(
        self,
        run_episodes: Callable[[Any], list[dict[str, Any]]],
        card: Callable[[BaseAlgorithm], dict[str, Any]],
        snapshots: Path,
        state: TrainingState,
        mlflow: Any,
        at: Sequence[int] = (),
        reference: str | None = None,
    ) -> None:
        super().__init__()
        self.run_episodes, self.card, self.snapshots = run_episodes, card, snapshots
        self.state, self.mlflow, self.at = state, mlflow, sorted(at)
        if not state.baseline_rows:
            state.baseline_rows = run_episodes(None)
        self.baseline = _mean_return(state.baseline_rows)
        self.reference: float | None = None
        if reference is not None:
            if not state.reference_rows:
                state.reference_rows = run_episodes(reference)
            self.reference = _mean_return(state.reference_rows)
            if not any(e["timesteps"] == 0 for e in state.evaluations):
                self._record(0, state.reference_rows, arm="start")
                state.evaluations.sort(key=lambda e: int(e["timesteps"]))  # first, also in a run resumed from before

    def evaluate(self, model: BaseAlgorithm) -> dict[str, Any]:
        """Export ``model``'s policy, evaluate it, log the result and append it to the state's evaluations."""

        timesteps = int(model.num_timesteps)
        venv = model.get_vec_normalize_env()
        snap = self.snapshots / f"{timesteps:08d}"
        export_sb3(model, venv, snap, self.card(model))
        load_artifact(snap)  # evaluate what ships, the torch-only export: it must load
        rows = self.run_episodes(str(snap))  # by path: each worker loads the file with the code it runs
        self.state.last_rows = rows
        result = self._record(timesteps, rows, arm="trained")
        failures = [r["first_failure"] for r in rows if r["failed_asks"]]
        if failures:
            warnings.warn(
                f"held-out evaluation at {timesteps} timesteps: asking the policy failed in "
                f"{int(result['failed_asks'])} decisions (the controller held); first: {failures[0]}",
                RuntimeWarning,
                stacklevel=2,
            )
        per_task = {}
        for task_id, row in self.state.episodes_per_task().items():
            per_task[f"task.{task_id}.episodes"] = float(row["episodes"])
            if row["mean_return"] is not None:
                per_task[f"task.{task_id}.mean_return"] = float(row["mean_return"])
        self.mlflow.log_metrics(per_task, step=timesteps)
        return result

    def _record(self, timesteps: int, rows: list[dict[str, Any]], arm: str) -> dict[str, Any]:
        """One evaluation row from the episodes of ``rows``: appended to the state and logged as ``eval.*``."""
        mean = _mean_return(rows)
        decisions = sum(int(r.get("decisions", 0)) for r in rows)
        result: dict[str, Any] = {
            "timesteps": timesteps,
            "arm": arm,
            "heldout_return": mean,
            "constant_return": self.baseline,
            "advantage": mean - self.baseline,
            "diverged": float(np.mean([r["diverged"] for r in rows])),
            # decisions where asking the policy failed and the controller held: a broken policy
            # scores exactly as "hold" does, so say so rather than report its return silently
            "failed_asks": float(sum(r["failed_asks"] for r in rows)),
            # decisions the out-of-distribution check handed to the heuristic (or to hold)
            "fallback_share": sum(int(r.get("fallbacks", 0)) for r in rows) / decisions if decisions else 0.0,
        }
        if self.reference is not None:
            result["start_return"] = self.reference
            result["vs_start"] = mean - self.reference  # the same instances: the mean of the paired differences
        self.mlflow.log_metrics({f"eval.{k}": v for k, v in result.items() if k not in ("timesteps", "arm")}, step=timesteps)
        self.state.evaluations.append(result)
        return result

    def last_timesteps(self) -> int:
        """The timesteps of the latest evaluation (-1 before any)."""
        return max((int(e["timesteps"]) for e in self.state.evaluations), default=-1)

    def evaluate_unless_done(self, model: BaseAlgorithm) -> bool:
        """Evaluate ``model`` unless the latest evaluation is at its timesteps (a finished run resumed
        to register it after a crash); whether it evaluated."""
        if self.last_timesteps() == int(model.num_timesteps):
            return False
        self.evaluate(model)
        return True

    def status(self) -> dict[str, str]:
        """The latest held-out return, the constant policy's and the starting policy's, for the progress bar."""
        evaluations = self.state.evaluations
        out = {
            "heldout": f"{evaluations[-1]['heldout_return']:+.3f}" if evaluations else "-",
            "constant": f"{self.baseline:+.3f}",
        }
        if self.reference is not None:
            out["start"] = f"{self.reference:+.3f}"
        return out

    def _on_rollout_start(self) -> None:
        now, last = int(self.model.num_timesteps), self.last_timesteps()
        if any(last < t <= now for t in self.at):
            self.evaluate(self.model)

    def _on_step(self) -> bool:
        return True


def _mean_return(rows: list[dict[str, Any]]) -> float:
    return float(np.mean([r["return"] for r in rows]))


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
