"""Meta-training: stable-baselines3 PPO over the zoo, logged in MLflow, exported as a chuck policy.

    from chuck.metatrain.train import MetaTrainConfig, train_policy
    result = train_policy(MetaTrainConfig(tasks="train", timesteps=40_000, output="runs/default"))

or ``chuck train-policy --tasks train --timesteps 40000 --output runs/default``.

What happens:

0. The task spec is resolved before anything starts: the modules of ``tasks_module`` are
   imported (they register in-house tasks), and a split or domain that selects nothing, an
   unknown id or a bad ``task_weights`` entry is an error (:class:`chuck.zoo.TaskSpecError`).
1. ``n_envs`` :class:`~chuck.envs.TrainingControlEnv` in subprocesses (SubprocVecEnv;
   one torch thread each; or, with ``backend="ray"``, in Ray actors anywhere on a cluster:
   :class:`chuck.metatrain.ray_backend.RayVecEnv`), wrapped in ``VecMonitor`` and ``VecNormalize`` (observations
   only: the reward is already scale-free). The normalization statistics are exported with
   the policy, so deployment sees exactly what training saw. Each environment process imports
   ``tasks_module`` itself and registers the in-house tasks it is sent, so tasks registered in
   this process reach workers that start from a fresh interpreter (forkserver, spawn, Ray).
2. PPO trains; every rollout's metrics go to MLflow (an SB3 ``KVWriter``). Every
   ``eval_every`` timesteps the policy is *exported* and the exported, torch-only actor is
   evaluated on the held-out families against the constant (do-nothing) policy on the same
   task instances: this is the deployment path, not SB3's ``predict``
   (:class:`~chuck.metatrain.callbacks.HeldOutEvalCallback`).
3. Checkpoints (SB3 zip + VecNormalize + progress) every ``checkpoint_every`` timesteps;
   a rerun with the same ``output`` resumes, continuing the same MLflow run
   (:class:`~chuck.metatrain.callbacks.ResumableCheckpointCallback`).
4. At the end: the artifact (``policy.pt`` + ``policy.json`` card, :mod:`chuck.metatrain.card`)
   is logged to the run, registered as a new version of ``name`` with ``alias`` (once: a rerun
   of a registered run does not register it again), and evaluation tables and plots are logged
   too. The card and the run name the resolved task ids and, per task, how many episodes it got
   and their mean return: what a policy was trained on is read, not inferred from the spec.

The settings, :class:`MetaTrainConfig`, live in :mod:`chuck.cli.config` (no torch: they are the
flags of ``chuck train-policy``); they are importable from here too.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chuck.cli.config import BACKENDS, MetaTrainConfig, default_eval_every, parse_modules, parse_task_weights
from chuck.core.observation import ObservationSpec
from chuck.metatrain.heldout import evaluate_policy, log_learning_curve

if TYPE_CHECKING:
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecNormalize

    from chuck.metatrain.callbacks import TrainingState

__all__ = [
    "BACKENDS",
    "MetaTrainConfig",
    "TrainResult",
    "default_eval_every",
    "evaluate_policy",
    "parse_modules",
    "parse_task_weights",
    "register_once",
    "resolve_training_tasks",
    "train_policy",
]


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


def train_policy(cfg: MetaTrainConfig) -> TrainResult:
    """Run (or resume) meta-training; see the module docstring.

    Raises:
        chuck.zoo.TaskSpecError: a bad task spec or task weight, before any file or run exists.
        ImportError: a missing optional dependency (stable-baselines3; Ray for ``backend="ray"``).
    """
    _need_dependencies(cfg)
    from stable_baselines3.common.callbacks import CallbackList
    from stable_baselines3.common.logger import Logger

    from chuck import tracking
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
    from chuck.metatrain.card import build_card
    from chuck.policies.artifact import load_artifact
    from chuck.policies.export import export_sb3

    # what to train on and from: a bad task spec or starting policy fails before any file or run exists
    train_tasks, eval_tasks = resolve_training_tasks(cfg)
    init = _fine_tune_start(cfg) if cfg.init_policy else None
    run_episodes = _heldout_episodes(cfg, eval_tasks)
    out, ckpt = Path(cfg.output), Path(cfg.output) / "checkpoint"
    out.mkdir(parents=True, exist_ok=True)
    state = TrainingState.load(ckpt / "state.json", [t.id for t in train_tasks], len(ObservationSpec().names))
    mlflow = tracking.setup(cfg.tracking_uri, cfg.experiment)

    venv = _make_vec_env(cfg, train_tasks, ckpt if state.resumed else None)
    run_id = state.run_id = _start_run(mlflow, state.run_id, f"{cfg.name}-seed{cfg.seed}").info.run_id
    try:
        _log_run_settings(mlflow, cfg, state)
        model = _make_ppo(cfg, venv, ckpt if state.resumed else None, init, mlflow)
        model.set_logger(Logger(folder=None, output_formats=[MLflowKVWriter(mlflow)]))  # type: ignore[list-item]

        checkpoint = ResumableCheckpointCallback(ckpt, state)
        card = partial(build_card, cfg, state)
        heldout = HeldOutEvalCallback(run_episodes, card, out / "snapshots", state, mlflow, cfg.timesteps)
        callbacks: list[Any] = [
            ObservationRangeCallback(state.obs_low, state.obs_high),
            TaskEpisodesCallback(state.task_episodes),
        ]
        if cfg.eval_every:  # 0: only the final evaluation
            callbacks.append(EveryNTimestepsSinceStart(cfg.eval_every, heldout))
        callbacks.append(EveryNTimestepsSinceStart(cfg.checkpoint_every, checkpoint))
        if cfg.progress:
            callbacks.append(ProgressCallback(cfg.timesteps, heldout.status))
        remaining = cfg.timesteps - int(model.num_timesteps)
        if remaining > 0:
            model.learn(total_timesteps=remaining, callback=CallbackList(callbacks), reset_num_timesteps=False)
        checkpoint.save(model)
        if heldout.evaluate_unless_done(model):  # the final evaluation (a finished run resumed has it already)
            checkpoint.save(model)

        artifact = export_sb3(model, venv, out / "artifact", card(model))
        load_artifact(artifact)  # the exported artifact must load before it is registered
        mlflow.log_artifacts(str(artifact), artifact_path="policy")
        mlflow.log_dict({"resolved_tasks": state.task_ids, "episodes_per_task": state.episodes_per_task()}, "training/tasks.json")
        log_learning_curve(mlflow, out, state.evaluations)
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
        )
    finally:
        mlflow.end_run()
        venv.close()


def _need_dependencies(cfg: MetaTrainConfig) -> None:
    """Raise ImportError, saying what to install, before anything starts."""
    try:
        import stable_baselines3  # noqa: F401
    except ImportError as exc:  # pragma: no cover - in chuck[all]
        raise ImportError("meta-training needs stable-baselines3 and mlflow: pip install 'chuck[all]'") from exc
    if cfg.backend == "ray":
        from chuck.metatrain.ray_backend import require_ray

        require_ray()


def resolve_training_tasks(cfg: MetaTrainConfig) -> tuple[list[Any], list[Any]]:
    """The training and evaluation tasks of ``cfg``, checked before anything starts.

    Imports ``cfg.tasks_module`` (here; :func:`_make_env` does it in each worker), resolves both
    specs and checks ``cfg.task_weights`` against the training tasks.

    Raises:
        chuck.zoo.TaskSpecError: a spec item that selects nothing, an unknown id or module, or a
            weight that is not positive and finite or names a task not trained on.
    """
    from chuck import zoo
    from chuck.envs.training_env import task_probabilities

    zoo.import_task_modules(cfg.tasks_module)
    train_tasks = zoo.resolve_tasks(cfg.tasks)
    try:
        task_probabilities(train_tasks, cfg.task_weights)
    except ValueError as exc:
        raise zoo.TaskSpecError(str(exc)) from None
    return train_tasks, zoo.resolve_tasks(cfg.eval_tasks)


def _fine_tune_start(cfg: MetaTrainConfig) -> Any:
    """The actor ``cfg.init_policy`` names, for a PPO run to start from (ValueError if it has none), with a
    warning for what the new run would not keep: another prior under the residual, a progress gate."""
    from chuck.core.loading import load_policy
    from chuck.policies.export import actor_to_fine_tune

    assert cfg.init_policy
    start = load_policy(cfg.init_policy)
    actor = actor_to_fine_tune(start, cfg.init_policy)
    card = getattr(start, "card", {})
    learned_on = card.get("prior")
    if learned_on != cfg.prior:
        what = f"learned its residual on {learned_on}" if learned_on else "is not a residual on a prior"
        warnings.warn(
            f"--init-policy {cfg.init_policy} {what}, this run trains it on {cfg.prior}: pass "
            f"--prior {learned_on or 'none'} to keep what it learned",
            stacklevel=3,
        )
    if card.get("residual_progress_gate") is not None:
        warnings.warn(
            f"--init-policy {cfg.init_policy} has a residual_progress_gate; the fine-tuned policy starts "
            "from its network without it (derive it again with experiments/derive_residual.py --progress-gate)",
            stacklevel=3,
        )
    return actor


def _heldout_episodes(cfg: MetaTrainConfig, eval_tasks: list[Any]) -> Callable[[Any], list[dict[str, Any]]]:
    """``run(policy)``: the held-out episodes of ``cfg`` with ``policy``, in worker processes with one torch
    thread each (PPO waits for them, so every core helps); the in-house evaluation tasks go to the workers by value."""
    from chuck.zoo import split_of

    return partial(
        evaluate_policy,
        tasks=cfg.eval_tasks,
        episodes=cfg.eval_episodes,
        interval=cfg.interval,
        budget_scale=cfg.budget_scale,
        workers=cfg.eval_workers or os.cpu_count() or 1,
        modules=cfg.tasks_module,
        shipped=[(t, "custom") for t in eval_tasks if split_of(t.id) == "custom"],
        progress=cfg.progress,
    )


def _make_vec_env(cfg: MetaTrainConfig, train_tasks: list[Any], resume_from: Path | None) -> VecNormalize:
    """``cfg.n_envs`` training environments in ``VecMonitor`` and ``VecNormalize`` (observations only: the
    reward is already scale-free), the normalization statistics of the checkpoint in ``resume_from`` if any."""
    from stable_baselines3.common.vec_env import VecMonitor, VecNormalize

    from chuck.zoo import split_of

    shipped = [(t, split_of(t.id)) for t in train_tasks if split_of(t.id) == "custom"]
    thunks = [
        _make_env(
            cfg.tasks,
            cfg.interval,
            cfg.budget_scale,
            cfg.seed + 1000 * i,
            cfg.prior,
            modules=cfg.tasks_module,
            shipped=shipped,
            task_weights=cfg.task_weights,
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
):
    """The constructor of one environment, run in its worker (a subprocess or a Ray actor).

    A worker may start from a fresh interpreter that never saw this process's registrations, so
    it imports ``modules`` (``--tasks-module``) and registers ``shipped`` ((task, split) pairs:
    the in-house tasks this process resolved, sent by value) before resolving ``tasks``.
    """

    def thunk():
        import torch

        torch.set_num_threads(1)  # one core per environment process
        from chuck import zoo
        from chuck.envs import TrainingControlEnv

        zoo.import_task_modules(modules)
        known = set(zoo.list_tasks("all"))
        for task, split in shipped:
            if task.id not in known:
                zoo.register_task(task, split=split)
        env = TrainingControlEnv(
            tasks=tasks, interval=interval, budget_scale=budget_scale, prior=prior, task_weights=task_weights
        )
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
        mlflow.set_tags({"chuck.kind": "meta-training", "chuck.observation_version": ObservationSpec().version})
    # a tag, not a param: a resumed run may resolve a spec like "custom" to more tasks than before
    mlflow.set_tag("chuck.resolved_tasks", ",".join(state.task_ids))


def _make_ppo(cfg: MetaTrainConfig, venv: VecNormalize, resume_from: Path | None, init: Any, mlflow: Any) -> PPO:
    """PPO from the checkpoint in ``resume_from`` if any; else a new one, from ``init``'s actor and
    observation statistics when fine-tuning."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.running_mean_std import RunningMeanStd

    from chuck.policies.export import load_actor_into_sb3

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
        load_actor_into_sb3(model, init)
        rms = venv.obs_rms  # one RunningMeanStd: the observation is a Box, not a dict
        assert isinstance(rms, RunningMeanStd)
        rms.mean = init.obs_mean.numpy().copy()
        rms.var = init.obs_var.numpy().copy()
        rms.count = 1e4  # trust the inherited statistics
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
    from chuck import tracking

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
