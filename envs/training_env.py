"""The meta-environment: one episode is one real training run of a zoo task."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from chuck.core.actions import ActionSpec
from chuck.core.observation import ObservationSpec
from chuck.core.optimizer import ChuckOptimizer
from chuck.policies.residual import ResidualPolicy, make_prior
from chuck.zoo.loop import train
from chuck.zoo.registry import resolve_tasks
from chuck.zoo.task import Task, TaskInstance


class TrainingControlEnv(gym.Env):
    """Control a real training run's hyperparameters through chuck.

    ## Description

    ``reset`` samples a task family from the selected split, then an instance of it
    (width, depth, activation, normalization, batch size, data size, label noise,
    base optimizer and an initial learning rate, see :meth:`chuck.zoo.Task.sample_config`),
    wraps its base optimizer in :class:`chuck.ChuckOptimizer` with ``policy=None`` and
    trains until the optimizer's first decision point. Each ``step(action)`` hands the
    action to the optimizer's :class:`chuck.core.controller.Controller` (the deployment
    path: the same ActionSpec, the same decision record) and trains, through the same
    optimizer, guardrails and monitors a user's loop runs (:func:`chuck.zoo.loop.train`),
    until the controller's next decision point: the decision clock is the one users
    run, counted in successful steps. Then it evaluates and, in most episodes,
    reports the validation loss with ``ChuckOptimizer.observe`` after the step, as the
    README's loop does.

    ## Action Space

    ``Box(-1, 1, (4,), float32)``: :class:`chuck.ActionSpec` v1, log-multiplicative
    changes of (lr, weight decay, clip threshold, dropout), each entry scaled by its
    rate limit (x2 per decision for lr).

    ## Observation Space

    ``Box(low, high, (37,), float32)``: :class:`chuck.ObservationSpec` v1, the named,
    scale-free health features of the monitors plus the controller state.

    ## Rewards

    With ``L_k`` the validation loss after decision ``k`` (floored at
    ``loss_floor x loss_reference``), ``r_k = log(L_{k-1}) - log(L_k)``: positive when
    the loss falls, scale-free, and an episode's return telescopes to
    ``log(L_start / L_end)``. On divergence the episode ends and the last reward is
    ``log(L_{k-1} / L_start) - divergence_penalty``, so a diverged episode returns
    exactly ``-divergence_penalty`` whatever it achieved before. RL tasks use the
    regret ``(R_max - R) / (R_max - R_min)`` of the mean episodic return in place of
    a loss (see chuck.zoo.families.rl).

    ## Episode End

    Terminates when the task's step budget is spent (the training run is over), or on
    divergence: a non-finite validation loss or weight, a loss above
    ``divergence_factor x max(L_0, loss_reference)``, or no decision point within two
    intervals' worth of calls (the guardrails skipped at least half of them). No
    truncation: the budget (rounded up to whole intervals) is the run.

    ## Arguments

    * ``tasks``: split name (``"train"``, ``"heldout"``, ``"custom"``, ``"all"``), ``"domain:cv"``,
      task ids, or a comma-separated mix (see ``chuck.zoo.resolve_tasks``).
    * ``interval``: inner training steps per decision (default 20).
    * ``budget_scale``: multiplies every task's step budget (tests use small values).
    * ``divergence_factor``, ``divergence_penalty``, ``loss_floor``: see Rewards / Episode End.
    * ``p_no_total``, ``p_no_model``: probability that an episode's ChuckOptimizer gets no
      ``total_steps`` / no ``model`` (as in user code that omits them).
    * ``p_no_val``: probability that an episode never calls ``observe(val_loss=...)`` (many
      training loops never do); the env still evaluates, for the reward only.
    * ``task_weights``: ``{task_id: weight}``, how often ``reset`` samples each task relative to
      the others (unlisted tasks weigh 1): an in-house task beside the N train families is otherwise
      sampled in 1 episode of N + 1. Weights must be positive and finite and name tasks of ``tasks``.
    * ``prior``: ``None``, or a built-in controller (``"prior@10"``, ``"prior@15"``, see
      chuck.policies.prior, or a name given to ``chuck.policies.register_policy``) whose action the
      agent's action is added to (:meth:`chuck.policies.residual.ResidualPolicy.compose`, the sum the
      exported policy deploys with): the agent learns a residual, and the exported policy carries the
      same prior (its card's ``prior`` field).
    * ``warmup``: the lr warm-up (steps) the run's optimizer applies, as ``ChuckOptimizer(warmup=...)``
      does; ``None``: the prior's (the shipped priors warm up). Meta-training's held-out evaluation
      asks a whole exported policy with no prior here, so it passes that policy's warm-up.
    * ``anneal``: the same for the per-step anneal at the end of a known budget (``Policy.anneal``);
      applied in the episodes that give ``total_steps``.
    * ``observation_version``: the observation spec the agent reads (``chuck.core.observation``;
      default: the newest); a fine-tuned or evaluated policy passes its own.

    ``reset(options=...)`` accepts ``task_id`` and any :class:`chuck.zoo.TaskConfig` field
    (``lr``, ``optimizer``, ``label_noise``, ...) to pin parts of the sampled instance.

    ## Info

    Every step: ``task_id``, ``val_loss``. At episode end also ``family``, ``domain``,
    ``hyperparameters`` (the sampled config), ``final`` (initial/final losses, metrics,
    effective lr/wd/clip), ``diverged`` and ``episode_log_ratio`` = log(L_start / L_end).
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        tasks: str | Sequence[str] = "train",
        interval: int = 20,
        budget_scale: float = 1.0,
        divergence_factor: float = 3.0,
        divergence_penalty: float = 1.0,
        loss_floor: float = 1e-3,
        p_no_total: float = 0.3,
        p_no_model: float = 0.2,
        p_no_val: float = 0.3,
        prior: str | None = None,
        task_weights: Mapping[str, float] | None = None,
        warmup: int | None = None,
        anneal: float | None = None,
        observation_version: str | None = None,
    ) -> None:
        super().__init__()
        if interval < 2:
            raise ValueError(f"interval must be >= 2, got {interval}")
        if budget_scale <= 0:
            raise ValueError(f"budget_scale must be positive, got {budget_scale}")
        self.tasks: list[Task] = resolve_tasks(tasks)
        # None: uniform over the tasks, drawn as before weights existed (same seeds, same tasks)
        self.task_probs = task_probabilities(self.tasks, task_weights) if task_weights else None
        self.interval = interval
        self.budget_scale = budget_scale
        self.divergence_factor = divergence_factor
        self.divergence_penalty = divergence_penalty
        self.loss_floor = loss_floor
        self.p_no_total, self.p_no_model, self.p_no_val = p_no_total, p_no_model, p_no_val
        self.give_val = True
        self.obs_spec = ObservationSpec(observation_version)
        self.prior = make_prior(prior, self.obs_spec.version)
        # the agent's action is a correction to the prior's, summed as a deployed residual sums it
        self.residual = ResidualPolicy(self.prior) if self.prior is not None else None
        self.warmup = warmup if warmup is not None else (self.prior.warmup if self.prior is not None else None)
        self.anneal = anneal if anneal is not None else (self.prior.anneal if self.prior is not None else None)
        self.observation_space = self.obs_spec.space
        self.action_space = ActionSpec().space
        self.instance: TaskInstance | None = None
        self.opt: ChuckOptimizer | None = None
        self.task: Task | None = None

    # -- helpers ----------------------------------------------------------
    def _budget(self, task: Task) -> int:
        # at least two decisions' worth of steps (one warm-up interval and one controlled), and a
        # whole number of intervals, so that the episode ends on a decision point
        steps = max(2 * self.interval, int(round(task.budget * self.budget_scale)))
        return -(-steps // self.interval) * self.interval

    def _eval(self) -> float:
        assert self.instance is not None
        v = float(self.instance.evaluate())
        return v if math.isfinite(v) else math.inf

    def _floor(self, loss: float) -> float:
        """Clip a loss into [floor, cap] so that every reward is finite.

        The cap is the divergence threshold: a loss above it ends the episode anyway, and an
        infinite loss (a warm-up that already diverged) must not turn log-ratios into inf or nan.
        """
        assert self.instance is not None
        ref = self.instance.loss_reference
        return min(max(loss, self.loss_floor * ref), self._cap) if not math.isnan(loss) else self._cap

    def _train_to_decision(self) -> bool:
        """Train until the optimizer's next decision point; ``False`` if it never came.

        The loop gets twice an interval's worth of calls: a decision missing after that many
        means the guardrails threw away at least half of them (the run is diverging).
        """
        assert self.instance is not None and self.opt is not None
        controller = self.opt.controller
        left = 2 * self.budget - self.opt.calls
        train(self.instance, self.opt, max(0, min(2 * self.interval, left)), until=lambda: controller.pending is not None)
        return controller.pending is not None

    # -- gym API ----------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if self.residual is not None:
            self.residual.reset()  # a new run: the prior's cooldown state starts over
        if self.task_probs is None:
            idx = int(self.np_random.integers(len(self.tasks)))
        else:
            idx = int(self.np_random.choice(len(self.tasks), p=self.task_probs))
        if options and "task_id" in options:
            ids = [t.id for t in self.tasks]
            if options["task_id"] not in ids:
                raise ValueError(f"task {options['task_id']!r} is not in this env's tasks {ids}")
            idx = ids.index(options["task_id"])
        self.task = self.tasks[idx]
        config = self.task.sample_config(self.np_random)
        for key, value in (options or {}).items():
            if key == "task_id":
                continue
            if not hasattr(config, key):
                raise ValueError(f"unknown reset option {key!r}: use 'task_id' or a TaskConfig field")
            setattr(config, key, type(getattr(config, key))(value))
        self.config = config
        torch.manual_seed(config.seed)
        self.instance = self.task.build(config)
        self.budget = self._budget(self.task)
        # Users may leave out total_steps or the model; so does the env, sometimes, so that a
        # policy trained here has seen those observations (progress and activation features absent).
        give_total = bool(self.np_random.random() >= self.p_no_total)
        give_model = bool(self.np_random.random() >= self.p_no_model)
        self.give_val = bool(self.np_random.random() >= self.p_no_val)
        self.opt = ChuckOptimizer(
            self.instance.optimizer,
            policy=None,
            model=self.instance.model if give_model else None,
            total_steps=self.budget if give_total else None,
            interval=self.interval,
            # the prior's warm-up (a residual deploys with its prior's schedule), or the one given
            warmup=self.warmup,
            anneal=self.anneal,
            seed=config.seed,
            history=False,  # thousands of meta-training episodes are not user runs
            # the agent is the policy: the controller encodes the features it reads (its policy slot is empty)
            observation_version=self.obs_spec.version,
        )
        self.opt.advise = False  # nor is there a user to advise (a diverging episode is routine here)
        first = self._eval()
        ref = self.instance.loss_reference
        self.l_init = max(first, self.loss_floor * ref) if math.isfinite(first) else ref
        self._cap = self.divergence_factor * max(self.l_init, ref)  # the divergence threshold
        reached = self._train_to_decision()
        raw = self._eval()
        self.l_start = self.l_prev = self._floor(raw)
        self._report(raw)
        obs = self.opt.controller.pending if reached else self.opt.observation()
        return obs, {"task_id": self.task.id, "val_loss": self.l_prev}

    def _report(self, raw: float) -> None:
        # a user's loop reports its evaluations with observe() after the step; the env does the
        # same in the episodes where it gives validation losses at all
        if self.give_val and math.isfinite(raw):
            assert self.opt is not None
            self.opt.observe(val_loss=raw)

    def step(self, action: np.ndarray):
        if self.opt is None or self.instance is None or self.task is None:
            raise RuntimeError("call reset() before step()")
        controller = self.opt.controller
        if controller.pending is not None:
            a = np.asarray(action, dtype=np.float64)
            if self.residual is not None:  # the agent learns corrections to the prior's action
                a = self.residual.compose(controller.pending, a)
            controller.act_external(a, self.opt.step_count)
        reached = self._train_to_decision()
        raw = self._eval()
        self._report(raw)
        l_now = self._floor(raw)
        weights_ok = all(bool(torch.isfinite(p).all()) for p in self.instance.model.parameters())
        diverged = not math.isfinite(raw) or not weights_ok or raw > self._cap or not reached
        done = diverged or self.opt.step_count >= self.budget or self.opt.calls >= 2 * self.budget
        if diverged:
            reward = math.log(self.l_prev / self.l_start) - self.divergence_penalty
        else:
            reward = math.log(self.l_prev) - math.log(l_now)
        info: dict[str, Any] = {"task_id": self.task.id, "val_loss": l_now}
        if done:
            info.update(self._final_info(l_now, diverged))
        self.l_prev = l_now
        obs = controller.pending if reached else self.opt.observation()
        return obs, float(reward), bool(done), False, info

    def _final_info(self, l_now: float, diverged: bool) -> dict[str, Any]:
        assert self.task is not None and self.instance is not None and self.opt is not None
        try:
            metrics = self.instance.metrics()
        except Exception:  # noqa: BLE001 - a diverged model may not even evaluate
            metrics = {}
        return {
            "family": self.task.family,
            "domain": self.task.domain,
            "hyperparameters": self.config.as_dict(),
            "final": {
                "initial_val_loss": self.l_init,
                "start_val_loss": self.l_start,
                "final_val_loss": l_now,
                "steps": self.opt.step_count,
                **metrics,
                **{k: v for k, v in self.opt.hyperparameters.items() if k in ("lr", "weight_decay", "clip", "dropout")},
            },
            "diverged": diverged,
            "episode_log_ratio": (-self.divergence_penalty if diverged else math.log(self.l_start / l_now)),
        }

    def close(self) -> None:
        """Release the instance's simulators (RL tasks hold Gymnasium envs; a batch of them closes itself)."""
        envs: Any = getattr(self.instance, "envs", None)
        if hasattr(envs, "close"):
            envs.close()
        else:
            for env in envs or []:
                env.close()
        self.instance = self.opt = None


def task_probabilities(tasks: Sequence[Task], weights: Mapping[str, float] | None) -> np.ndarray:
    """Sampling probability of each of ``tasks`` under ``weights`` (``{task_id: weight}``, others 1).

    Raises ValueError for a weight that names none of ``tasks`` (a typo would otherwise leave the
    task it meant at weight 1 without a word) or that is not a positive finite number.
    """
    ids = [t.id for t in tasks]
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(ids))
    if unknown:
        raise ValueError(f"task weights name tasks that are not being trained on: {unknown} (the tasks: {ids})")
    for task_id, w in weights.items():
        if not isinstance(w, numbers.Real) or isinstance(w, bool) or not math.isfinite(w) or w <= 0:
            raise ValueError(f"task weight of {task_id!r} must be a positive finite number, got {w!r}")
    p = np.array([float(weights.get(i, 1.0)) for i in ids], dtype=np.float64)
    return p / p.sum()
