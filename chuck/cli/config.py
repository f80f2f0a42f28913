"""The settings of chuck's commands, one dataclass each, and nothing heavy.

Every field of a config dataclass is a flag of its command: its name, default and type make
the flag, and the attribute docstring under it is the flag's help. This module imports only the
standard library, so that ``chuck --help`` and ``chuck COMMAND --help`` answer without loading
torch, numpy, stable-baselines3 or MLflow; the modules that run a command import its config
from here (``chuck.metatrain.MetaTrainConfig`` is :class:`MetaTrainConfig`).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import numbers
import textwrap
from dataclasses import dataclass, field
from typing import Any

#: Where meta-training's environments run: subprocesses of this machine, or Ray actors on a cluster.
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


#: Held-out evaluations on a run's learning curve when ``--eval-every`` is not given (the final one included).
CURVE_POINTS = 5

#: The prior a policy trained from scratch is a residual on: the latest built-in version. Written out, not
#: imported: chuck.policies.prior imports torch. The test suite checks that it names
#: chuck.policies.prior.LATEST.
LATEST_PRIOR = "prior@15"


def ppo_updates(timesteps: int, rollout: int) -> int:
    """How many times PPO updates the policy in a run of ``timesteps``: it learns whole rollouts
    (``rollout`` = n_steps x n_envs timesteps each), so a run ends at the first multiple of ``rollout``
    at or past ``timesteps``."""
    return max(1, math.ceil(timesteps / max(1, rollout)))


def evaluation_timesteps(timesteps: int, rollout: int, eval_every: int | None = None, points: int = CURVE_POINTS) -> list[int]:
    """The timesteps at which a run's policy is evaluated on held-out instances, the final one included.

    The policy changes once per rollout, so an evaluation sits between two updates and is labelled with
    the timesteps the policy was trained on; a run of ``timesteps`` makes ``U`` = :func:`ppo_updates`
    updates and ends at ``U x rollout``. Without ``eval_every``: ``min(points, U)`` evaluations spread
    evenly over the updates, the last at the end, so a curve has as many points as the budget has
    distinct policies, up to ``points`` (a budget of 3 rollouts: 3 points; of 79: 5). With
    ``eval_every``: after every ``eval_every`` timesteps, each rounded up to the next update, and at
    the end; ``0``: only at the end. A fine-tuning run adds the starting policy at timestep 0.
    """
    updates = ppo_updates(timesteps, rollout)
    end = updates * rollout
    if eval_every is None:
        n = min(points, updates)
        return sorted({rollout * round(updates * j / n) for j in range(1, n + 1)})
    if eval_every == 0:
        return [end]
    every = {rollout * math.ceil(k * eval_every / rollout) for k in range(1, end // eval_every + 1)}
    return sorted({t for t in every if t <= end} | {end})


def field_docs(cls: type) -> dict[str, str]:
    """``{field: its attribute docstring, whitespace folded}`` of a config dataclass: its flags' help.

    Attribute docstrings are not kept at run time, so they are read from the class's source (as
    Sphinx's autodoc does); a field without one is missing from the dict.
    """
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def field_default(f: dataclasses.Field) -> Any:
    """The value a field takes when its flag is not given (``default_factory`` called)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise ValueError(f"field {f.name!r} has no default: every config field is an optional flag")


@dataclass
class MetaTrainConfig:
    """Settings of one meta-training run (every field is a ``chuck train-policy`` flag)."""

    tasks: str | None = None
    """Training tasks: a split ("train", "custom", "all"), "domain:cv", task ids, or a comma-separated mix; each item
    must select a task (default: "custom,train" when in-house tasks are registered (--tasks-module, an entry point,
    $CHUCK_TASKS_MODULES), else "train")."""
    tasks_module: list[str] = field(default_factory=list)
    """Modules that register tasks when imported, comma-separated (e.g. my_pkg.tasks), imported here and in every
    environment worker."""
    task_weights: dict[str, float] = field(default_factory=dict)
    """How often each training task is sampled relative to the others, ID=W,ID=W; unlisted tasks weigh 1 (beside
    --zoo-share, each side's weights split that side's share)."""
    zoo_share: float = 0.5
    """Share of training episodes drawn from the zoo's families when in-house tasks are trained beside them,
    whatever the number of families on each side (0.5: half the episodes are your tasks'; --tasks custom trains on
    your tasks alone)."""
    eval_tasks: str | None = None
    """Tasks of the held-out evaluation, on instances no training environment is seeded with (default: the in-house
    tasks trained on when there are any, so a retrained policy is judged on your tasks; else "validation")."""
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
    """Start from this policy ("default", a path, models:/...): fine-tuning keeps its actor, its prior (unless --prior
    is given), its observation ranges and statistics (merged with the new run's), and evaluates it beside the new
    one as the reference arm."""
    output: str = "runs/policy"
    """Directory for checkpoints and the exported artifact; rerunning with it resumes."""
    name: str = "chuck-policy"
    """Registered model name in MLflow (and the policy's name in its card)."""
    alias: str = "candidate"
    """Alias set on the new registered version."""
    eval_every: int | None = None
    """Timesteps between held-out evaluations, each rounded up to the next PPO update; 0: only at the end (default:
    min(5, PPO updates in the budget) evaluations spread evenly over the updates, the last at the end; fine-tuning
    adds the starting policy at timestep 0)."""
    eval_episodes: int = 8
    """Held-out instances per evaluation (fixed seeds, the same instances every time, every arm)."""
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
    observation_version: str | None = None
    """Observation spec the policy reads (chuck.core.observation; default: the --init-policy's own when fine-tuning,
    else the newest)."""
    prior: str | None = "auto"
    """Built-in controller the policy is a residual on ("prior@N", see chuck.policies.prior), or none (default: auto:
    the --init-policy's own prior when fine-tuning, else the latest version, the best prior alone)."""
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
    where annealing pays, must not be discounted away."""
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
        # (0 timesteps would export and register an untrained policy; 0 environments, an IndexError)
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
        if self.eval_every is not None and (isinstance(self.eval_every, bool) or self.eval_every < 0):
            raise ValueError(f"eval_every must be >= 0 (0: only at the end), got {self.eval_every}")
        if not (isinstance(self.zoo_share, numbers.Real) and 0 < self.zoo_share < 1):
            raise ValueError(f"zoo_share must be between 0 and 1 (exclusive), got {self.zoo_share!r}")
        if self.observation_version is not None:
            from chuck.core.observation import FEATURE_SETS  # numpy and gymnasium: not for --help

            self.observation_version = str(self.observation_version)
            if self.observation_version not in FEATURE_SETS:
                raise ValueError(f"observation_version must be one of {sorted(FEATURE_SETS)}, got {self.observation_version!r}")
        if self.prior == "auto" and not self.init_policy:
            self.prior = LATEST_PRIOR  # nothing to inherit a prior from

    @property
    def rollout(self) -> int:
        """Timesteps per PPO update: n_steps x n_envs (2048: stable-baselines3's default n_steps)."""
        return int(self.ppo.get("n_steps", 2048)) * self.n_envs

    def evaluation_timesteps(self) -> list[int]:
        """When this run evaluates its policy on held-out instances: :func:`evaluation_timesteps`."""
        return evaluation_timesteps(self.timesteps, self.rollout, self.eval_every)


@dataclass
class DemoConfig:
    """Settings of ``chuck demo`` (each is a flag)."""

    task: str = "cv.digits_mlp"
    """Zoo task to train."""
    lr: float = 1e-5
    """The deliberately poor initial learning rate (too low for AdamW by about two decades)."""
    steps: int = 600
    """Training steps per arm."""
    policy: str = "default"
    """chuck policy for the second arm ("default", "heuristic", a path, models:/...)."""
    seed: int = 0
    """Seed of the task instance (data subset, init, batch order)."""
    out: str = "chuck_demo.png"
    """Where the PNG goes."""
    tracking_uri: str | None = None
    """MLflow tracking URI (default: sqlite under CHUCK_HOME)."""
    experiment: str = "chuck-demo"
    """MLflow experiment."""
    quick: bool = False
    """Short budget (60 steps), for CI smoke tests."""

    def __post_init__(self) -> None:
        from chuck.zoo import get_task  # the zoo imports torch: only when a demo is set up, never for --help

        try:
            get_task(self.task)
        except KeyError as exc:
            raise ValueError(exc.args[0]) from None
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
