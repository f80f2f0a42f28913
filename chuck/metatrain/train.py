"""Meta-training: stable-baselines3 PPO over the zoo, logged in MLflow, exported as a chuck policy.

    from chuck.metatrain.train import MetaTrainConfig, train_policy
    result = train_policy(MetaTrainConfig(tasks="train", timesteps=40_000, output="runs/default"))

or ``chuck train-policy --tasks train --timesteps 40000 --output runs/default``.

What happens:

0. The task spec is resolved before anything starts: the modules of ``tasks_module`` are
   imported (they register in-house tasks), and a split or domain that selects nothing, an
   unknown id or a bad ``task_weights`` entry is an error (:class:`chuck.zoo.TaskSpecError`).
   With in-house tasks registered and no ``tasks`` given, the run trains on them and the zoo's
   train families, ``zoo_share`` of the episodes from the zoo (:func:`episode_weights`), and
   evaluates on the in-house tasks. Tasks whose starting lrs fall back to 1e-3 (no best-lr entry)
   are named once, here, not by every worker. With ``init_policy`` (fine-tuning) the starting
   policy is loaded: its prior is the run's unless ``prior`` names another, its observation ranges
   are kept (the exported ranges are their union with what the run sees) and its normalization
   statistics are merged with the run's, weighted by the observations behind each.
1. ``n_envs`` :class:`~chuck.envs.TrainingControlEnv` in subprocesses (SubprocVecEnv;
   one torch thread each; or, with ``backend="ray"``, in Ray actors anywhere on a cluster:
   :class:`chuck.metatrain.ray_backend.RayVecEnv`), wrapped in ``VecMonitor`` and ``VecNormalize`` (observations
   only: the reward is already scale-free). The normalization statistics are exported with
   the policy, so deployment sees exactly what training saw. Each environment process imports
   ``tasks_module`` itself and registers the in-house tasks it is sent, so tasks registered in
   this process reach workers that start from a fresh interpreter (forkserver, spawn, Ray).
2. PPO trains; every rollout's metrics go to MLflow (an SB3 ``KVWriter``). Every
   planned evaluation (:func:`chuck.cli.config.evaluation_timesteps`) the policy is *exported* and
   the exported, torch-only actor is evaluated on held-out instances (seeds no training environment
   is seeded with) against the constant (do-nothing) policy and, when fine-tuning, the starting
   policy on the same instances: this is the deployment path, not SB3's ``predict``
   (:class:`~chuck.metatrain.callbacks.HeldOutEvalCallback`).
3. Checkpoints (SB3 zip + VecNormalize + progress) every ``checkpoint_every`` timesteps;
   a rerun with the same ``output`` resumes, continuing the same MLflow run
   (:class:`~chuck.metatrain.callbacks.ResumableCheckpointCallback`).
4. At the end: the artifact (``policy.pt`` + ``policy.json`` card, :mod:`chuck.metatrain.card`)
   is logged to the run, registered as a new version of ``name`` with ``alias`` (once: a rerun
   of a registered run does not register it again), and evaluation tables and plots are logged
   too. The card and the run name the resolved task ids and, per task, how many episodes it got
   and their mean return: what a policy was trained on is read, not inferred from the spec. The
   final policy is compared with its start and with holding, paired on the held-out instances of
   the in-house tasks (:mod:`chuck.metatrain.comparison`): in the card (``comparison``), the run
   (``compare.*`` metrics, tag ``chuck.verdict``) and :attr:`TrainResult.comparison`.

The settings, :class:`MetaTrainConfig`, live in :mod:`chuck.cli.config` (no torch: they are the
flags of ``chuck train-policy``); they are importable from here too.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

import chuck.tracking as tracking
import chuck.zoo as zoo
from chuck.cli.config import BACKENDS, LATEST_PRIOR, MetaTrainConfig, evaluation_timesteps, parse_modules, parse_task_weights
from chuck.core.loading import load_policy
from chuck.core.observation import LATEST_VERSION as LATEST_OBSERVATION
from chuck.core.observation import ObservationSpec
from chuck.envs import TrainingControlEnv
from chuck.envs.training_env import task_probabilities
from chuck.metatrain.callbacks import TrainingState
from chuck.metatrain.card import build_card
from chuck.metatrain.comparison import compare_arms
from chuck.metatrain.heldout import EvaluationPool, evaluate_policy, log_learning_curve
from chuck.policies.artifact import load_artifact, save_artifact
from chuck.policies.export import actor_to_fine_tune, export_sb3, load_actor_into_sb3
from chuck.zoo import split_of
from chuck.zoo.starting_lr import FALLBACK_LR, count_as_said
from chuck.zoo.task import uncalibrated

if TYPE_CHECKING:
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecNormalize

    pass

__all__ = [
    "BACKENDS",
    "SettingsConflict",
    "MetaTrainConfig",
    "FineTuneStart",
    "TrainResult",
    "episode_weights",
    "evaluate_policy",
    "evaluation_timesteps",
    "heldout_seed",
    "parse_modules",
    "parse_task_weights",
    "register_once",
    "resolve_config",
    "resolve_training_tasks",
    "train_policy",
]


class SettingsConflict(ValueError):
    """Settings that contradict the starting policy or the run's checkpoint; raised before anything starts."""


#: The first held-out seed; training environments are seeded with ``seed + 1000 * i`` (:func:`heldout_seed`).
HELDOUT_SEED = 10_000


@dataclass
class TrainResult:
    """What :func:`train_policy` produced."""

    artifact_dir: Path
    """The exported policy (``policy.pt`` + ``policy.json``): ``chuck.load_policy`` loads it."""
    run_id: str
    """The MLflow run, the same across resumes of one output directory in one store."""
    model_version: str | None
    """The registered model version of the policy (``models:/NAME@ALIAS``)."""
    evaluations: list[dict[str, Any]]
    """Every held-out evaluation of the run, resumed ones included, in timestep order."""
    lost_episodes: int = 0
    """Episodes whose environment actor died and that were retried (Ray backend)."""
    timesteps: int = 0
    """Timesteps the run holds (PPO learns whole rollouts: it can be more than asked for)."""
    trained_now: bool = True
    """``False`` when the run already held the timesteps asked for (a rerun): nothing was trained."""
    registered_now: bool = True
    """``False`` when a rerun found the same policy already registered under the same name and alias
    (``model_version`` is that version): nothing trained, nothing registered twice."""
    comparison: dict[str, Any] = field(default_factory=dict)
    """The final policy against its start and the constant policy, paired on the held-out instances of the
    in-house tasks (all held-out instances without any): :func:`chuck.metatrain.comparison.compare_arms`."""
    heldout_seeds: list[int] = field(default_factory=list)
    """The seeds of the held-out instances."""
    config: MetaTrainConfig | None = None
    """The settings the run used, defaults resolved (tasks, evaluation tasks, prior)."""


@dataclass
class FineTuneStart:
    """What a fine-tuning run takes from its ``--init-policy``."""

    name: str
    """The policy as named (``"default"``, a path, ``models:/...``)."""
    actor: Any
    """Its :class:`~chuck.policies.learned.ActorNetwork`: PPO's actor starts as this one."""
    card: dict[str, Any]
    """Its card."""
    obs_low: np.ndarray | None
    """The observation range it was trained on (the new run's exported range contains it)."""
    obs_high: np.ndarray | None
    observations: float
    """How many observations its normalization statistics summarize (its training timesteps; 1e4 when the
    card does not say): their weight when merged with the new run's."""
    observation_version: str
    """The observation spec its actor reads (the new run trains on it)."""


def train_policy(cfg: MetaTrainConfig) -> TrainResult:
    """Run (or resume) meta-training; see the module docstring.

    Raises:
        chuck.zoo.TaskSpecError: a bad task spec or task weight, before any file or run exists.
        SettingsConflict: an observation spec other than the starting policy's or the checkpoint's.
        ImportError: a missing optional dependency (stable-baselines3; Ray for ``backend="ray"``).
    """
    _need_dependencies(cfg)
    from stable_baselines3.common.callbacks import CallbackList
    from stable_baselines3.common.logger import Logger

    from chuck.metatrain.callbacks import (
        EveryNTimestepsSinceStart,
        HeldOutEvalCallback,
        MLflowKVWriter,
        ObservationRangeCallback,
        ProgressCallback,
        ResumableCheckpointCallback,
        TaskEpisodesCallback,
        TrainingState,
    )

    # what to train on and from: a bad task spec or starting policy fails before any file or run exists
    init = _fine_tune_start(cfg) if cfg.init_policy else None
    cfg = resolve_config(_with_checkpoint_observation(cfg), init)
    train_tasks, eval_tasks = resolve_training_tasks(cfg)
    weights = episode_weights(train_tasks, cfg.task_weights, cfg.zoo_share)
    _say_uncalibrated(train_tasks + [t for t in eval_tasks if t not in train_tasks])
    in_house = _in_house(eval_tasks)
    seed0 = heldout_seed(cfg)
    shipped = [(t, "custom") for t in eval_tasks if t.id in in_house]
    pool = EvaluationPool(min(cfg.eval_workers or os.cpu_count() or 1, cfg.eval_episodes), cfg.tasks_module, shipped)
    run_episodes = _heldout_episodes(cfg, eval_tasks, seed0, pool)
    out, ckpt = Path(cfg.output), Path(cfg.output) / "checkpoint"
    out.mkdir(parents=True, exist_ok=True)
    state = TrainingState.load(ckpt / "state.json", [t.id for t in train_tasks], ObservationSpec(cfg.observation_version))
    if init is not None and not state.resumed:  # fine-tuning keeps what the starting policy was trained on
        state.widen_ranges(init.obs_low, init.obs_high)
    reference = _save_start(init, out / "start") if init is not None else None
    mlflow = tracking.setup(cfg.tracking_uri, cfg.experiment)

    venv = _make_vec_env(cfg, train_tasks, ckpt if state.resumed else None, weights)
    run_id = state.run_id = _start_run(mlflow, state.run_id, f"{cfg.name}-seed{cfg.seed}").info.run_id
    try:
        _log_run_settings(mlflow, cfg, state)
        model = _make_ppo(cfg, venv, ckpt if state.resumed else None, init, mlflow)
        model.set_logger(Logger(folder=None, output_formats=[MLflowKVWriter(mlflow)]))  # type: ignore[list-item]

        checkpoint = ResumableCheckpointCallback(ckpt, state)
        extra = {"episode_weights": weights, "heldout_seeds": [seed0, seed0 + cfg.eval_episodes - 1]}
        card = partial(build_card, cfg, state, extra=extra)
        plan = cfg.evaluation_timesteps()
        heldout = HeldOutEvalCallback(run_episodes, card, out / "snapshots", state, mlflow, plan[:-1], reference)
        callbacks: list[Any] = [
            ObservationRangeCallback(state.obs_low, state.obs_high),
            TaskEpisodesCallback(state.task_episodes),
            heldout,
        ]
        callbacks.append(EveryNTimestepsSinceStart(cfg.checkpoint_every, checkpoint))
        if cfg.progress:
            callbacks.append(ProgressCallback(plan[-1], heldout.status))
        remaining = cfg.timesteps - int(model.num_timesteps)
        if remaining > 0:
            model.learn(total_timesteps=remaining, callback=CallbackList(callbacks), reset_num_timesteps=False)
        checkpoint.save(model)
        evaluated = heldout.evaluate_unless_done(model)  # the final evaluation (a finished run resumed has it already)
        if evaluated or not state.comparison:
            state.comparison = compare_arms(
                state.last_rows, state.reference_rows, state.baseline_rows, in_house=in_house, reference=cfg.init_policy
            )
            checkpoint.save(model)

        artifact = export_sb3(model, venv, out / "artifact", card(model))
        load_artifact(artifact)  # the exported artifact must load before it is registered
        mlflow.log_artifacts(str(artifact), artifact_path="policy")
        mlflow.log_dict({"resolved_tasks": state.task_ids, "episodes_per_task": state.episodes_per_task()}, "training/tasks.json")
        log_learning_curve(mlflow, out, state.evaluations, _heldout_title(cfg, eval_tasks, seed0))
        _log_comparison(mlflow, state.comparison, int(model.num_timesteps))
        version, registered_now = register_once(mlflow, run_id, cfg.name, cfg.alias, int(model.num_timesteps))
        lost = int(getattr(venv.unwrapped, "lost_episodes", 0))
        if cfg.backend == "ray":
            mlflow.log_metric("ray.lost_episodes", lost, step=int(model.num_timesteps))
        return TrainResult(
            artifact_dir=artifact,
            run_id=run_id,
            model_version=version,
            evaluations=state.evaluations,
            lost_episodes=lost,
            timesteps=int(model.num_timesteps),
            trained_now=remaining > 0,
            registered_now=registered_now,
            comparison=state.comparison,
            heldout_seeds=list(range(seed0, seed0 + cfg.eval_episodes)),
            config=cfg,
        )
    finally:
        mlflow.end_run()
        venv.close()
        pool.close()


def _need_dependencies(cfg: MetaTrainConfig) -> None:
    """Raise ImportError, saying what to install, before anything starts."""
    try:
        import stable_baselines3  # noqa: F401
    except ImportError as exc:  # pragma: no cover - in chuck[all]
        raise ImportError("meta-training needs stable-baselines3 and mlflow: pip install 'chuck[all]'") from exc
    if cfg.backend == "ray":
        from chuck.metatrain.ray_backend import require_ray

        require_ray()


def resolve_config(cfg: MetaTrainConfig, start: FineTuneStart | None = None) -> MetaTrainConfig:
    """``cfg`` with its defaults made concrete: a copy naming the tasks, the evaluation tasks, the prior and the
    observation spec.

    Imports ``cfg.tasks_module`` first (the in-house tasks it registers decide the defaults): no ``tasks``
    trains on the in-house tasks and the zoo's train split when any is registered, on "train" otherwise; no
    ``eval_tasks`` evaluates on the in-house tasks trained on when there are any, on "validation" otherwise;
    prior ``"auto"`` is the starting policy's own prior when fine-tuning (``start``), the latest otherwise; no
    ``observation_version`` is the starting policy's own spec when fine-tuning, the newest otherwise.

    Raises:
        SettingsConflict: an ``observation_version`` other than the starting policy's.
    """

    zoo.import_task_modules(cfg.tasks_module)
    tasks = cfg.tasks
    if tasks is None:
        tasks = "custom,train" if zoo.list_tasks("custom") else "train"
    eval_tasks = cfg.eval_tasks
    if eval_tasks is None:
        in_house = _in_house(zoo.resolve_tasks(tasks))
        eval_tasks = ",".join(in_house) if in_house else "validation"
    prior = cfg.prior
    if prior == "auto":
        prior = start.card.get("prior") if start is not None else LATEST_PRIOR
    # a fine-tuned actor reads its inputs by position: it keeps the observation spec it was trained on
    observation_version = cfg.observation_version
    if start is not None and observation_version not in (None, start.observation_version):
        raise SettingsConflict(
            f"--init-policy {start.name} reads observation spec v{start.observation_version}: it cannot be fine-tuned "
            f"on v{observation_version} (leave --observation-version out)"
        )
    if observation_version is None:
        observation_version = start.observation_version if start is not None else LATEST_OBSERVATION
    return dataclasses.replace(cfg, tasks=tasks, eval_tasks=eval_tasks, prior=prior, observation_version=observation_version)


def _with_checkpoint_observation(cfg: MetaTrainConfig) -> MetaTrainConfig:
    """``cfg`` resuming its checkpoint on the observation spec the checkpoint was trained on.

    Raises:
        SettingsConflict: ``cfg`` names another spec than the checkpoint's.
    """
    saved = TrainingState.saved_observation_version(Path(cfg.output) / "checkpoint" / "state.json")
    if saved is None:
        return cfg
    if cfg.observation_version not in (None, saved):
        raise SettingsConflict(
            f"{cfg.output} holds a run on observation spec v{saved}: it resumes on v{saved}, not "
            f"v{cfg.observation_version} (leave --observation-version out, or give another --output)"
        )
    return dataclasses.replace(cfg, observation_version=saved)


def resolve_training_tasks(cfg: MetaTrainConfig) -> tuple[list[Any], list[Any]]:
    """The training and evaluation tasks of ``cfg``, checked before anything starts.

    Imports ``cfg.tasks_module`` (here; :func:`_make_env` does it in each worker), resolves both
    specs (their defaults as :func:`resolve_config` makes them) and checks ``cfg.task_weights``
    against the training tasks.

    Raises:
        chuck.zoo.TaskSpecError: a spec item that selects nothing, an unknown id or module, or a
            weight that is not positive and finite or names a task not trained on.
    """

    if cfg.tasks is None or cfg.eval_tasks is None:
        cfg = resolve_config(cfg)
    assert cfg.tasks is not None and cfg.eval_tasks is not None
    zoo.import_task_modules(cfg.tasks_module)
    train_tasks = zoo.resolve_tasks(cfg.tasks)
    try:
        task_probabilities(train_tasks, cfg.task_weights)
    except ValueError as exc:
        raise zoo.TaskSpecError(str(exc)) from None
    return train_tasks, zoo.resolve_tasks(cfg.eval_tasks)


def _in_house(tasks: Sequence[Any]) -> list[str]:
    """The ids of the in-house tasks (the "custom" split) among ``tasks``."""

    return [t.id for t in tasks if split_of(t.id) == "custom"]


def episode_weights(train_tasks: Sequence[Any], task_weights: Mapping[str, float], zoo_share: float) -> dict[str, float]:
    """Per training task, the weight its environments sample it with.

    With in-house tasks and zoo families side by side, the zoo families get ``zoo_share`` of the episodes
    and the in-house tasks the rest, whatever the number of tasks on each side (one in-house task beside
    22 train families would otherwise get 1 episode in 23); ``task_weights`` (unlisted: 1) split each
    side's share. With one side only, ``task_weights`` as given.
    """
    in_house = set(_in_house(train_tasks))
    zoo_ids = [t.id for t in train_tasks if t.id not in in_house]
    if not in_house or not zoo_ids:
        return {str(k): float(v) for k, v in task_weights.items()}

    def weight(task_id: str) -> float:
        return float(task_weights.get(task_id, 1.0))

    ours = sum(weight(i) for i in in_house)
    theirs = sum(weight(i) for i in zoo_ids)
    out = {t.id: (1.0 - zoo_share) * weight(t.id) / ours for t in train_tasks if t.id in in_house}
    out.update({i: zoo_share * weight(i) / theirs for i in zoo_ids})
    return out


def heldout_seed(cfg: MetaTrainConfig) -> int:
    """The first seed of the held-out instances (``cfg.eval_episodes`` consecutive seeds from it).

    Training environment ``i`` is seeded once, with ``cfg.seed + 1000 * i``, and draws every later
    episode from that generator; the held-out instances start at :data:`HELDOUT_SEED` unless a training
    seed falls among them, then just past the largest training seed: no held-out instance is an
    instance a training environment is seeded with.
    """
    training = {cfg.seed + 1000 * i for i in range(cfg.n_envs)}
    if any(HELDOUT_SEED <= s < HELDOUT_SEED + cfg.eval_episodes for s in training):
        return max(training) + 1
    return HELDOUT_SEED


def _say_uncalibrated(tasks: Sequence[Any]) -> None:
    """Once, in this process: the tasks whose episodes start around 1e-3 instead of their own best lr."""

    missing = uncalibrated(tasks)
    count_as_said(tasks)  # not again when this process draws an episode (one environment, one eval worker)
    if missing:
        warnings.warn(
            f"no best-lr entry for {', '.join(missing)}: their episodes start from lrs drawn around {FALLBACK_LR:g} "
            "(too low, near or too high, a third each) instead of around their own best lr. Declare best_lr on the "
            "task class, or measure it once: python -m chuck.zoo.calibrate --tasks-module MODULE --tasks "
            f"{','.join(missing)} (docs/retraining.md)",
            UserWarning,
            stacklevel=3,
        )


def _fine_tune_start(cfg: MetaTrainConfig) -> FineTuneStart:
    """What ``cfg.init_policy`` gives a PPO run to start from (ValueError if it has no network), with a
    warning for what the new run would not keep: a prior other than its own named by ``cfg.prior``, a
    progress gate."""

    assert cfg.init_policy
    start = load_policy(cfg.init_policy)
    actor = actor_to_fine_tune(start, cfg.init_policy)
    card = dict(getattr(start, "card", {}))
    learned_on = card.get("prior")
    if cfg.prior != "auto" and learned_on != cfg.prior:
        what = f"learned its residual on {learned_on}" if learned_on else "is not a residual on a prior"
        warnings.warn(
            f"--init-policy {cfg.init_policy} {what}, this run trains it on {cfg.prior}: leave --prior out "
            "to keep what it learned",
            stacklevel=3,
        )
    if card.get("residual_progress_gate") is not None:
        warnings.warn(
            f"--init-policy {cfg.init_policy} has a residual_progress_gate; the fine-tuned policy starts "
            "from its network without it (derive it again with experiments/derive_residual.py --progress-gate)",
            stacklevel=3,
        )
    timesteps = (card.get("training") or {}).get("timesteps")
    return FineTuneStart(
        name=cfg.init_policy,
        actor=actor,
        card=card,
        obs_low=getattr(start, "obs_low", None),
        obs_high=getattr(start, "obs_high", None),
        observations=float(timesteps) if isinstance(timesteps, (int, float)) and timesteps > 0 else 1e4,
        observation_version=start.observation_version,
    )


def _save_start(start: FineTuneStart, where: Path) -> str:
    """The starting policy as an artifact directory of this run (the reference arm's workers load it by path,
    whether it came from the package, a path or the MLflow registry)."""

    if not (where / "policy.json").exists():
        save_artifact(start.actor, where, {k: v for k, v in start.card.items() if k != "sha256"})
        load_artifact(where)
    return str(where)


def _heldout_episodes(
    cfg: MetaTrainConfig, eval_tasks: list[Any], seed: int = HELDOUT_SEED, pool: Any = None
) -> Callable[[Any], list[dict[str, Any]]]:
    """``run(policy)``: the held-out episodes of ``cfg`` with ``policy``, in worker processes with one torch
    thread each (PPO waits for them, so every core helps; ``pool``: kept for the whole run); the in-house
    evaluation tasks go to the workers by value.

    Episode ``i`` has seed ``seed + i``; with in-house tasks among the evaluation tasks, its task is the
    ``i``-th of them in turn (each gets its share of the instances, not a random one).
    """

    assert cfg.eval_tasks is not None
    options = None
    if _in_house(eval_tasks):
        ids = [t.id for t in eval_tasks]
        options = [{"task_id": ids[i % len(ids)]} for i in range(cfg.eval_episodes)]
    return partial(
        evaluate_policy,
        tasks=cfg.eval_tasks,
        episodes=cfg.eval_episodes,
        interval=cfg.interval,
        budget_scale=cfg.budget_scale,
        seed=seed,
        options=options,
        workers=cfg.eval_workers or os.cpu_count() or 1,
        modules=cfg.tasks_module,
        shipped=[(t, "custom") for t in eval_tasks if split_of(t.id) == "custom"],
        progress=cfg.progress,
        calibration_said=True,
        pool=pool,
    )


def _heldout_title(cfg: MetaTrainConfig, eval_tasks: Sequence[Any], seed: int) -> str:
    names = ", ".join(t.id for t in eval_tasks[:3]) + (f" +{len(eval_tasks) - 3}" if len(eval_tasks) > 3 else "")
    return f"held-out: {cfg.eval_episodes} instances of {names} (seeds {seed}-{seed + cfg.eval_episodes - 1})"


def _log_comparison(mlflow: Any, comparison: Mapping[str, Any], timesteps: int) -> None:
    """The paired comparisons as ``compare.start.*`` / ``compare.constant.*`` metrics and the verdict as a tag."""
    metrics = {}
    for arm in ("start", "constant"):
        c = comparison.get(arm)
        if c:
            metrics.update(
                {
                    f"compare.{arm}.loss_ratio": c["loss_ratio"],
                    f"compare.{arm}.loss_ratio_lo": c["interval"][0],
                    f"compare.{arm}.loss_ratio_hi": c["interval"][1],
                    f"compare.{arm}.instances": float(c["instances"]),
                    f"compare.{arm}.lower_on": float(c["lower_on"]),
                }
            )
    if metrics:
        mlflow.log_metrics(metrics, step=timesteps)
    start = comparison.get("start")
    if start:
        lo, hi = start["interval"]
        mlflow.set_tag(
            "chuck.verdict",
            f"{start['verdict']} vs {comparison.get('reference')}: final loss x{start['loss_ratio']:.3f} "
            f"[{lo:.3f}, {hi:.3f}] on {start['instances']} held-out instances",
        )


def _make_vec_env(
    cfg: MetaTrainConfig, train_tasks: list[Any], resume_from: Path | None, weights: Mapping[str, float] | None = None
) -> VecNormalize:
    """``cfg.n_envs`` training environments in ``VecMonitor`` and ``VecNormalize`` (observations only: the
    reward is already scale-free), the normalization statistics of the checkpoint in ``resume_from`` if any;
    tasks sampled with ``weights`` (:func:`episode_weights`; default ``cfg.task_weights``)."""
    from stable_baselines3.common.vec_env import VecMonitor, VecNormalize

    shipped = [(t, split_of(t.id)) for t in train_tasks if split_of(t.id) == "custom"]
    assert cfg.tasks is not None, "resolve_config names the tasks"
    thunks = [
        _make_env(
            cfg.tasks,
            cfg.interval,
            cfg.budget_scale,
            cfg.seed + 1000 * i,
            cfg.prior,
            modules=cfg.tasks_module,
            shipped=shipped,
            task_weights=dict(cfg.task_weights if weights is None else weights),
            calibration_said=True,
            observation_version=cfg.observation_version,
        )
        for i in range(cfg.n_envs)
    ]
    monitored = VecMonitor(_vec_env(cfg, thunks))
    if resume_from is not None and (resume_from / "vecnormalize.pkl").exists():
        return VecNormalize.load(str(resume_from / "vecnormalize.pkl"), monitored)  # training-internal pickle, never shipped
    return VecNormalize(monitored, norm_obs=True, norm_reward=False, clip_obs=10.0)


def _make_env(
    tasks: str,
    interval: int,
    budget_scale: float,
    seed: int,
    prior: str | None = None,
    *,
    modules: Sequence[str] = (),
    shipped: Sequence[tuple[Any, str]] = (),
    task_weights: dict[str, float] | None = None,
    calibration_said: bool = False,
    observation_version: str | None = None,
):
    """The constructor of one environment, run in its worker (a subprocess or a Ray actor).

    A worker may start from a fresh interpreter that never saw this process's registrations, so
    it imports ``modules`` (``--tasks-module``) and registers ``shipped`` ((task, split) pairs:
    the in-house tasks this process resolved, sent by value) before resolving ``tasks``.
    ``calibration_said``: the run said which tasks lack a best-lr entry; the worker does not again.
    """

    def thunk():
        import torch

        torch.set_num_threads(1)  # one core per environment process

        zoo.import_task_modules(modules)
        known = set(zoo.list_tasks("all"))
        for task, split in shipped:
            if task.id not in known:
                zoo.register_task(task, split=split)
        env = TrainingControlEnv(
            tasks=tasks,
            interval=interval,
            budget_scale=budget_scale,
            prior=prior,
            task_weights=task_weights,
            observation_version=observation_version,
        )
        if calibration_said:
            count_as_said(env.tasks)
        env.reset(seed=seed)
        return env

    return thunk


def _vec_env(cfg: MetaTrainConfig, thunks: list[Any]) -> Any:
    """The vectorized environments of ``cfg.backend``."""
    if cfg.backend == "ray":
        from chuck.metatrain.ray_backend import RayVecEnv

        return RayVecEnv(thunks, address=cfg.ray_address, num_cpus=cfg.ray_cpus_per_env, num_gpus=cfg.ray_gpus_per_env)
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    return SubprocVecEnv(thunks) if cfg.n_envs > 1 else DummyVecEnv(thunks)


def _start_run(mlflow: Any, run_id: str | None, name: str) -> Any:
    """Continue the checkpoint's MLflow run, or start a new one when this store does not have it
    (a checkpoint resumed on another machine, or in a fresh CHUCK_HOME)."""
    if run_id is not None:
        try:
            mlflow.get_run(run_id)
            return mlflow.start_run(run_id=run_id)
        except Exception:  # noqa: BLE001 - MlflowException: not in this store
            run = mlflow.start_run(run_name=name)
            mlflow.set_tag("chuck.resumed_from_run", run_id)
            return run
    return mlflow.start_run(run_name=name)


def _log_run_settings(mlflow: Any, cfg: MetaTrainConfig, state: TrainingState) -> None:
    """The settings as params and the kind as tags, once per run; the resolved tasks on every (re)start."""
    import json

    if not state.resumed:
        mlflow.log_params({k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in asdict(cfg).items()})
        mlflow.set_tags({"chuck.kind": "meta-training", "chuck.observation_version": str(cfg.observation_version)})
    # a tag, not a param: a resumed run may resolve a spec like "custom" to more tasks than before
    mlflow.set_tag("chuck.resolved_tasks", ",".join(state.task_ids))


def _make_ppo(cfg: MetaTrainConfig, venv: VecNormalize, resume_from: Path | None, init: FineTuneStart | None, mlflow: Any) -> PPO:
    """PPO from the checkpoint in ``resume_from`` if any; else a new one, from ``init``'s actor and
    observation statistics when fine-tuning.

    The statistics are merged, not replaced: ``VecNormalize`` updates them as a running mean and variance
    over every observation counted, and the starting policy's count as the observations it was trained
    on (its timesteps), so the exported mean and std are those of everything the policy has seen, its
    start's training and this run's, each weighted by its number of observations.
    """
    from stable_baselines3 import PPO
    from stable_baselines3.common.running_mean_std import RunningMeanStd

    if resume_from is not None and (resume_from / "ppo.zip").exists():
        return PPO.load(str(resume_from / "ppo.zip"), env=venv, device="cpu")
    model = PPO(
        "MlpPolicy",
        venv,
        seed=cfg.seed,
        device="cpu",
        verbose=0,
        policy_kwargs={"net_arch": {"pi": list(cfg.net_arch), "vf": list(cfg.net_arch)}, "log_std_init": cfg.log_std_init},
        **cfg.ppo,
    )
    if init is not None:
        load_actor_into_sb3(model, init.actor)
        rms = venv.obs_rms  # one RunningMeanStd: the observation is a Box, not a dict
        assert isinstance(rms, RunningMeanStd)
        rms.mean = init.actor.obs_mean.numpy().copy()
        rms.var = init.actor.obs_var.numpy().copy()
        rms.count = init.observations
        mlflow.set_tag("chuck.init_policy", cfg.init_policy)
    return model


def register_once(mlflow: Any, run_id: str, name: str, alias: str, timesteps: int) -> tuple[str | None, bool]:
    """Register run ``run_id``'s ``policy`` artifact as a new version of ``name`` with ``alias``:
    ``(version, registered_now)``.

    A rerun of a finished, registered run (after a crash past registration, or by mistake) must not
    add one more model version of the same policy each time: when the run's tags say it registered
    these timesteps under this name and alias, that version is returned and nothing is registered.
    A new alias (or more timesteps) registers a new version.
    """

    done = f"models:/{name}@{alias} timesteps {timesteps}"
    tags = mlflow.MlflowClient().get_run(run_id).data.tags
    if tags.get("chuck.registered_state") == done and "chuck.registered_version" in tags:
        return tags["chuck.registered_version"], False
    version = tracking.register_artifact(run_id, "policy", name, alias)
    mlflow.set_tags(
        {
            "chuck.registered": f"models:/{name}@{alias} (version {version})",
            "chuck.registered_state": done,
            "chuck.registered_version": str(version),
        }
    )
    return version, True


def _log_eval_outputs(mlflow: Any, out: Path, evaluations: list[dict[str, Any]], baseline_rows: Sequence[Any] = ()) -> None:
    """:func:`chuck.metatrain.heldout.log_learning_curve` under its former name (``baseline_rows`` is not
    used: each evaluation holds the constant policy's return)."""
    log_learning_curve(mlflow, out, evaluations)
