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
   task instances: this is the deployment path, not SB3's ``predict``.
3. Checkpoints (SB3 zip + VecNormalize + progress) every ``checkpoint_every`` timesteps;
   a rerun with the same ``output`` resumes, continuing the same MLflow run.
4. At the end: the artifact (``policy.pt`` + ``policy.json`` card) is logged to the run,
   registered as a new version of ``name`` with ``alias``, and evaluation tables and plots
   are logged too. The card and the run name the resolved task ids and, per task, how many
   episodes it got and their mean return: what a policy was trained on is read, not inferred
   from the spec.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from chuck.core.observation import ObservationSpec

if TYPE_CHECKING:
    from chuck.core.controller import PolicyAnswer

BACKENDS = ("process", "ray")


def parse_task_weights(text: str) -> dict[str, float]:
    """``"ID=W,ID=W"`` (the ``--task-weights`` flag) as ``{id: weight}``; ``""`` is no weights.

    Only the format is checked here; whether the ids are trained on, and the values positive and
    finite, is checked against the resolved tasks (:func:`chuck.envs.training_env.task_probabilities`).
    """
    out: dict[str, float] = {}
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        task_id, sep, value = item.partition("=")
        if not sep or not task_id.strip():
            raise ValueError(f"task weight {item!r} is not ID=WEIGHT (e.g. inhouse.churn=5)")
        try:
            out[task_id.strip()] = float(value)
        except ValueError:
            raise ValueError(f"task weight {item!r}: {value.strip()!r} is not a number") from None
    return out


def parse_modules(text: str) -> list[str]:
    """``"a.tasks,b.tasks"`` (the ``--tasks-module`` flag) as a list of module names."""
    return [m.strip() for m in text.split(",") if m.strip()]


def default_eval_every(timesteps: int, rollout: int) -> int:
    """The default ``eval_every``: a fifth of the budget rounded to one significant digit, at least one rollout.

    A fifth gives every learning curve five points (four in training and the final one) whatever
    the budget, where a fixed interval gave a short run a single point; one significant digit keeps
    the evaluation steps readable (8000 for 40000, 600 for 3000); and evaluating more often than
    PPO updates the policy (every ``rollout`` = n_steps x n_envs timesteps) would evaluate the same
    policy twice.
    """
    raw = max(1.0, timesteps / 5)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    return max(1, int(rollout), int(round(raw / magnitude) * magnitude))


@dataclass
class MetaTrainConfig:
    """Settings of one meta-training run (every field is a ``chuck train-policy`` flag)."""

    tasks: str = "train"
    """Training tasks: a split ("train", "custom", "all"), "domain:cv", task ids, or a comma-separated mix; each item
    must select a task."""
    tasks_module: list[str] = field(default_factory=list)
    """Modules that register tasks when imported, comma-separated (e.g. my_pkg.tasks), imported here and in every
    environment worker."""
    task_weights: dict[str, float] = field(default_factory=dict)
    """How often each training task is sampled relative to the others, ID=W,ID=W; unlisted tasks weigh 1."""
    eval_tasks: str = "validation"
    """Tasks of the periodic evaluation (the validation families by default: they choose checkpoints)."""
    timesteps: int = 40_000
    """PPO timesteps (= decisions) in total, across environments."""
    seed: int = 0
    """Seed of PPO and of the environments."""
    n_envs: int = 2
    """Parallel environments (subprocesses, or Ray actors); one per core is right."""
    backend: str = "process"
    """Where the environments run: "process" (subprocesses of this machine) or "ray" (Ray actors on a cluster)."""
    ray_address: str | None = None
    """Ray cluster to join, HOST:PORT (default: $RAY_ADDRESS, else a local Ray runtime for this run)."""
    ray_cpus_per_env: float = 1.0
    """CPUs each environment actor requests from Ray."""
    ray_gpus_per_env: float = 0.0
    """GPUs each environment actor requests from Ray."""
    interval: int = 20
    """Inner training steps per decision; stored in the card and used at deployment."""
    budget_scale: float = 1.0
    """Multiplies each task's step budget (small values for smoke tests)."""
    init_policy: str | None = None
    """Start from this policy's actor and normalization ("default", a path, models:/...): fine-tuning."""
    output: str = "runs/policy"
    """Directory for checkpoints and the exported artifact; rerunning with it resumes."""
    name: str = "chuck-policy"
    """Registered model name in MLflow (and the policy's name in its card)."""
    alias: str = "candidate"
    """Alias set on the new registered version."""
    eval_every: int | None = None
    """Timesteps between held-out evaluations, 0: only at the end (default: a fifth of --timesteps rounded to one
    significant digit, at least one PPO rollout: 8000 for 40000, 600 for 3000)."""
    eval_episodes: int = 8
    """Episodes per evaluation (fixed seeds, the same instances every time)."""
    eval_workers: int = 0
    """Worker processes of each evaluation, one torch thread each (PPO waits meanwhile); 0: one per CPU core."""
    checkpoint_every: int = 2_000
    """Timesteps between checkpoints."""
    tracking_uri: str | None = None
    """MLflow tracking URI (default: local SQLite under CHUCK_HOME)."""
    experiment: str = "chuck-meta-training"
    """MLflow experiment name."""
    progress: bool = True
    """Show a progress bar."""
    prior: str | None = "prior@15"
    """Built-in controller the policy is a residual on ("prior@N", see chuck.policies.prior), or none;
    by default the latest, the best prior alone (the shipped default names its own in its card). A
    literal: importing the prior would import torch into ``chuck train-policy --help``;
    tests/metatrain/test_train.py keeps it the latest."""
    ppo: dict[str, Any] = field(
        default_factory=lambda: {
            "n_steps": 256,
            "batch_size": 128,
            "n_epochs": 10,
            "learning_rate": 3e-4,
            "gamma": 1.0,
            "gae_lambda": 0.95,
            "clip_range": 0.2,
            "ent_coef": 0.0,
        }
    )
    """PPO hyperparameters passed to stable_baselines3.PPO (n_steps is per environment). gamma = 1: an
    episode's return telescopes to log(L_start / L_end) only undiscounted, and the end of a run,
    where annealing pays, must not be discounted away (the policy issue, lever 4)."""
    net_arch: list[int] = field(default_factory=lambda: [64, 64])
    """Hidden layers of actor and critic."""
    log_std_init: float = -1.2
    """Initial log std of the Gaussian policy: std 0.30 explores around the prior without slamming every bound."""

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        # the flags' text syntax is accepted from Python too
        if isinstance(self.tasks_module, str):
            self.tasks_module = parse_modules(self.tasks_module)
        if isinstance(self.task_weights, str):
            self.task_weights = parse_task_weights(self.task_weights)
        for task_id, w in self.task_weights.items():
            if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w) or w <= 0:
                raise ValueError(f"task weight of {task_id!r} must be a positive finite number, got {w!r}")
        # counts that must be positive: caught here, before a run, an MLflow entry or a worker exists
        # (0 timesteps used to export and register an untrained policy; 0 environments, an IndexError)
        for name in ("timesteps", "n_envs", "eval_episodes", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        if self.interval < 2:  # the Controller's own bound, said before the environments start
            raise ValueError(
                f"interval must be >= 2 (updates are sampled on the two steps before a decision), got {self.interval}"
            )
        if self.eval_workers < 0:
            raise ValueError(f"eval_workers must be >= 0 (0: one per CPU core), got {self.eval_workers}")
        if not (self.budget_scale > 0 and math.isfinite(self.budget_scale)):
            raise ValueError(f"budget_scale must be a positive number, got {self.budget_scale}")
        if not self.net_arch or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in self.net_arch):
            raise ValueError(f"net_arch must be a list of layer widths >= 1, got {self.net_arch!r}")
        if self.eval_every is None:
            rollout = int(self.ppo.get("n_steps", 2048)) * self.n_envs  # 2048: stable-baselines3's default
            self.eval_every = default_eval_every(self.timesteps, rollout)
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0 (0: only at the end), got {self.eval_every}")


@dataclass
class TrainResult:
    artifact_dir: Path
    run_id: str
    model_version: str | None
    evaluations: list[dict[str, Any]]
    lost_episodes: int = 0
    """Episodes whose environment actor died and that were retried (Ray backend)."""
    timesteps: int = 0
    """Timesteps the run holds (PPO learns whole rollouts: it can be more than asked for)."""
    trained_now: bool = True
    """``False`` when the run already held the timesteps asked for (a rerun): nothing was trained."""
    registered_now: bool = True
    """``False`` when a rerun found the same policy already registered under the same name and alias
    (``model_version`` is that version): nothing trained, nothing registered twice."""


def _need_sb3():
    try:
        import stable_baselines3  # noqa: F401
    except ImportError as exc:  # pragma: no cover - in chuck[all]
        raise ImportError("meta-training needs stable-baselines3 and mlflow: pip install 'chuck[all]'") from exc


def _vec_env(cfg: MetaTrainConfig, thunks: list[Any]) -> Any:
    """The vectorized environments of ``cfg.backend``."""
    if cfg.backend == "ray":
        from chuck.metatrain.ray_backend import RayVecEnv

        return RayVecEnv(thunks, address=cfg.ray_address, num_cpus=cfg.ray_cpus_per_env, num_gpus=cfg.ray_gpus_per_env)
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    return SubprocVecEnv(thunks) if cfg.n_envs > 1 else DummyVecEnv(thunks)


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


def train_policy(cfg: MetaTrainConfig) -> TrainResult:
    """Run (or resume) meta-training; see the module docstring."""
    _need_sb3()
    if cfg.backend == "ray":
        from chuck.metatrain.ray_backend import require_ray

        require_ray()  # before anything starts: the message says how to install it
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import CallbackList
    from stable_baselines3.common.logger import Logger
    from stable_baselines3.common.running_mean_std import RunningMeanStd
    from stable_baselines3.common.vec_env import VecMonitor, VecNormalize

    from chuck import tracking
    from chuck.metatrain.callbacks import (
        EveryCallback,
        MLflowKVWriter,
        ObservationRangeCallback,
        ProgressCallback,
        TaskEpisodesCallback,
        task_episode_summary,
    )
    from chuck.policies.artifact import load_artifact
    from chuck.policies.export import export_sb3, load_actor_into_sb3
    from chuck.zoo import split_of

    train_tasks, eval_tasks = resolve_training_tasks(cfg)  # fail fast on a bad task spec, before any file or run exists
    init = _fine_tune_start(cfg) if cfg.init_policy else None  # likewise for a policy that cannot be fine-tuned
    task_ids = [t.id for t in train_tasks]
    shipped = [(t, split_of(t.id)) for t in train_tasks if split_of(t.id) == "custom"]
    # held-out evaluation in worker processes, one torch thread each: PPO waits for it, so every core helps
    eval_pool = {
        "workers": cfg.eval_workers or os.cpu_count() or 1,
        "modules": cfg.tasks_module,
        "shipped": [(t, "custom") for t in eval_tasks if split_of(t.id) == "custom"],
        "progress": cfg.progress,
    }
    out = Path(cfg.output)
    ckpt = out / "checkpoint"
    out.mkdir(parents=True, exist_ok=True)
    state_path = ckpt / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    mlflow = tracking.setup(cfg.tracking_uri, cfg.experiment)

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
    venv: VecNormalize
    if state and (ckpt / "vecnormalize.pkl").exists():
        venv = VecNormalize.load(str(ckpt / "vecnormalize.pkl"), monitored)  # training-internal pickle, never shipped
    else:
        venv = VecNormalize(monitored, norm_obs=True, norm_reward=False, clip_obs=10.0)
    rms = venv.obs_rms  # one RunningMeanStd: the observation is a Box, not a dict
    assert isinstance(rms, RunningMeanStd)

    run = _start_run(mlflow, state.get("run_id"), f"{cfg.name}-seed{cfg.seed}")
    run_id = run.info.run_id
    try:
        if not state:
            mlflow.log_params({k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in asdict(cfg).items()})
            mlflow.set_tags({"chuck.kind": "meta-training", "chuck.observation_version": ObservationSpec().version})
        # a tag, not a param: a resumed run may resolve a spec like "custom" to more tasks than before
        mlflow.set_tag("chuck.resolved_tasks", ",".join(task_ids))

        if state and (ckpt / "ppo.zip").exists():
            model = PPO.load(str(ckpt / "ppo.zip"), env=venv, device="cpu")
        else:
            model = PPO(
                "MlpPolicy",
                venv,
                seed=cfg.seed,
                device="cpu",
                verbose=0,
                policy_kwargs={
                    "net_arch": {"pi": list(cfg.net_arch), "vf": list(cfg.net_arch)},
                    "log_std_init": cfg.log_std_init,
                },
                **cfg.ppo,
            )
            if init is not None:
                load_actor_into_sb3(model, init)
                rms.mean = init.obs_mean.numpy().copy()
                rms.var = init.obs_var.numpy().copy()
                rms.count = 1e4  # trust the inherited statistics
                mlflow.set_tag("chuck.init_policy", cfg.init_policy)
        model.set_logger(Logger(folder=None, output_formats=[MLflowKVWriter(mlflow)]))  # type: ignore[list-item]

        obs_low = np.asarray(state.get("obs_low", [np.inf] * len(ObservationSpec().names)), dtype=np.float64)
        obs_high = np.asarray(state.get("obs_high", [-np.inf] * len(ObservationSpec().names)), dtype=np.float64)
        evaluations: list[dict[str, Any]] = list(state.get("evaluations", []))
        episodes: dict[str, dict[str, float]] = dict(state.get("task_episodes", {}))  # filled in place by a callback

        def per_task() -> dict[str, dict[str, Any]]:
            return task_episode_summary(episodes, task_ids)

        def log_per_task() -> None:
            metrics = {}
            for task_id, row in per_task().items():
                metrics[f"task.{task_id}.episodes"] = float(row["episodes"])
                if row["mean_return"] is not None:
                    metrics[f"task.{task_id}.mean_return"] = float(row["mean_return"])
            mlflow.log_metrics(metrics, step=int(model.num_timesteps))

        baseline_rows = evaluate_policy(
            None, cfg.eval_tasks, cfg.eval_episodes, interval=cfg.interval, budget_scale=cfg.budget_scale, **eval_pool
        )
        baseline = float(np.mean([r["return"] for r in baseline_rows]))

        def card(extra_eval: dict[str, Any] | None = None) -> dict[str, Any]:
            finite = np.isfinite(obs_low) & np.isfinite(obs_high)
            return {
                "name": cfg.name,
                "version": f"{run_id[:8]}-{int(model.num_timesteps)}",
                "interval": cfg.interval,
                "prior": cfg.prior,
                "observation_stats": {
                    "low": np.where(finite, obs_low, ObservationSpec().low).tolist(),
                    "high": np.where(finite, obs_high, ObservationSpec().high).tolist(),
                    "mean": np.asarray(rms.mean).tolist(),
                    "std": np.sqrt(np.asarray(rms.var)).tolist(),
                },
                "training": {
                    "tasks": cfg.tasks,
                    "resolved_tasks": task_ids,
                    "tasks_module": list(cfg.tasks_module),
                    "task_weights": dict(cfg.task_weights),
                    "episodes_per_task": per_task(),
                    "eval_tasks": cfg.eval_tasks,
                    "timesteps": int(model.num_timesteps),
                    "seed": cfg.seed,
                    "mlflow_run_id": run_id,
                    "ppo": cfg.ppo,
                    "interval": cfg.interval,
                    "budget_scale": cfg.budget_scale,
                    "init_policy": cfg.init_policy,
                },
                "evaluation": extra_eval or (evaluations[-1] if evaluations else {}),
            }

        def run_eval() -> dict[str, Any]:
            # every evaluated policy is kept as a snapshot: checkpoint selection compares them later
            # with `chuck evaluate` on many more instances than these few episodes
            snap = out / "snapshots" / f"{int(model.num_timesteps):08d}"
            export_sb3(model, venv, snap, card())
            load_artifact(snap)  # evaluate what ships, the torch-only export: it must load
            rows = evaluate_policy(  # by path: each worker loads the file with the code it runs
                str(snap), cfg.eval_tasks, cfg.eval_episodes, interval=cfg.interval, budget_scale=cfg.budget_scale, **eval_pool
            )
            mean = float(np.mean([r["return"] for r in rows]))
            result = {
                "timesteps": int(model.num_timesteps),
                "heldout_return": mean,
                "constant_return": baseline,
                "advantage": mean - baseline,
                "diverged": float(np.mean([r["diverged"] for r in rows])),
                # decisions where asking the policy failed and the controller held: a broken policy
                # scores exactly as "hold" does, so say so rather than report its return silently
                "failed_asks": float(sum(r["failed_asks"] for r in rows)),
            }
            failures = [r["first_failure"] for r in rows if r["failed_asks"]]
            if failures:
                warnings.warn(
                    f"held-out evaluation at {result['timesteps']} timesteps: asking the policy failed in "
                    f"{int(result['failed_asks'])} decisions (the controller held); first: {failures[0]}",
                    RuntimeWarning,
                    stacklevel=2,
                )
            mlflow.log_metrics({f"eval.{k}": v for k, v in result.items() if k != "timesteps"}, step=int(model.num_timesteps))
            log_per_task()
            evaluations.append(result)
            return result

        def save_checkpoint() -> None:
            ckpt.mkdir(parents=True, exist_ok=True)
            model.save(str(ckpt / "ppo.zip"))
            venv.save(str(ckpt / "vecnormalize.pkl"))
            state_path.write_text(
                json.dumps(
                    {
                        "run_id": run_id,
                        "timesteps": int(model.num_timesteps),
                        "obs_low": obs_low.tolist(),
                        "obs_high": obs_high.tolist(),
                        "evaluations": evaluations,
                        "task_episodes": episodes,
                    }
                )
            )

        def run_eval_in_training() -> None:
            # at the last timestep the final evaluation below follows at once: one evaluation, not two
            if int(model.num_timesteps) < cfg.timesteps:
                run_eval()

        assert cfg.eval_every is not None  # set by __post_init__
        callbacks = [
            ObservationRangeCallback(obs_low, obs_high),
            TaskEpisodesCallback(episodes),
            EveryCallback(cfg.eval_every, run_eval_in_training),
            EveryCallback(cfg.checkpoint_every, save_checkpoint),
        ]
        if cfg.progress:
            callbacks.append(
                ProgressCallback(
                    cfg.timesteps,
                    lambda: {
                        "heldout": f"{evaluations[-1]['heldout_return']:+.3f}" if evaluations else "-",
                        "constant": f"{baseline:+.3f}",
                    },
                )
            )

        remaining = cfg.timesteps - int(model.num_timesteps)
        if remaining > 0:
            model.learn(total_timesteps=remaining, callback=CallbackList(callbacks), reset_num_timesteps=False)
        save_checkpoint()
        if evaluations and evaluations[-1]["timesteps"] == int(model.num_timesteps):
            final = evaluations[-1]  # a finished run resumed (to register it after a crash): evaluated already
        else:
            final = run_eval()
            save_checkpoint()

        artifact = export_sb3(model, venv, out / "artifact", card(final))
        load_artifact(artifact)  # the exported artifact must load before it is registered
        mlflow.log_artifacts(str(artifact), artifact_path="policy")
        mlflow.log_dict({"resolved_tasks": task_ids, "episodes_per_task": per_task()}, "training/tasks.json")
        _log_eval_outputs(mlflow, out, evaluations, baseline_rows)
        # a rerun of a finished, registered run (after a crash past registration, or by mistake) must not add
        # one more model version of the same policy each time
        done = f"models:/{cfg.name}@{cfg.alias} timesteps {int(model.num_timesteps)}"
        tags = mlflow.MlflowClient().get_run(run_id).data.tags
        registered_now = tags.get("chuck.registered_state") != done or "chuck.registered_version" not in tags
        if registered_now:
            version = tracking.register_artifact(run_id, "policy", cfg.name, cfg.alias)
            mlflow.set_tags(
                {
                    "chuck.registered": f"models:/{cfg.name}@{cfg.alias} (version {version})",
                    "chuck.registered_state": done,
                    "chuck.registered_version": str(version),
                }
            )
        else:
            version = tags["chuck.registered_version"]
        lost = int(getattr(monitored.venv, "lost_episodes", 0))
        if cfg.backend == "ray":
            mlflow.log_metric("ray.lost_episodes", lost, step=int(model.num_timesteps))
        return TrainResult(
            artifact_dir=artifact,
            run_id=run_id,
            model_version=version,
            evaluations=evaluations,
            lost_episodes=lost,
            timesteps=int(model.num_timesteps),
            trained_now=remaining > 0,
            registered_now=registered_now,
        )
    finally:
        mlflow.end_run()
        venv.close()


def _log_eval_outputs(mlflow: Any, out: Path, evaluations: list[dict[str, Any]], baseline_rows: list[dict[str, Any]]) -> None:
    """Evaluation table (CSV) and learning-curve plot as run artifacts."""
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
