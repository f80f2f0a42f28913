"""stable-baselines3: ``model.learn(..., callback=ChuckSB3Callback("heuristic", return_range=(0, 500)))``.

At training start the callback wraps ``model.policy.optimizer`` in a
``ChuckOptimizer``. SB3 rewrites ``group["lr"]`` from its schedule before every
update; chuck's multiplier applies on top of whatever SB3 wrote (the multiplier
design, exercised end to end).

Which optimizers: the policy's one (``policy.optimizer``: PPO, A2C, DQN), or, for the
actor-critic algorithms that give each network its own (SAC, TD3, DDPG), the actor's and the
critic's, each wrapped with its own network as ``model`` and its own copy of the policy. SAC's
entropy-coefficient optimizer (one scalar) is left alone.

The budget: for PPO and A2C the callback gives chuck ``total_steps``, the optimizer steps the
``learn`` call will take (rollouts x epochs x minibatches for PPO; one a rollout for A2C), so the
default can plan its cooldown; PPO stopping its epochs early on ``target_kl`` ends the run short of
it. The off-policy algorithms' counts hang on when episodes end, so there chuck runs without one
unless ``total_steps`` is passed. Each ``learn`` call is one run for chuck: a later call (with
``reset_num_timesteps=False``) wraps the base optimizer afresh, planned for its own budget.

Progress signal: SB3's losses say little about progress, so the callback reports
the mean episodic return (SB3's ``ep_info_buffer``) turned into a positive regret
``(R_max - R) / (R_max - R_min)`` when ``return_range`` is given, exactly as
chuck's zoo RL tasks do; without it chuck watches gradients and weights only.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

try:
    from stable_baselines3.common.callbacks import BaseCallback
except ImportError as exc:  # pragma: no cover
    raise ImportError("chuck.integrations.sb3 needs stable-baselines3: pip install 'chuck[all]'") from exc

from chuck.core.optimizer import ChuckOptimizer


class ChuckSB3Callback(BaseCallback):
    """Steer an SB3 algorithm's optimizer with chuck.

    Args:
        policy: any ``chuck.load_policy`` name/path/URI, or a Policy.
        return_range: (R_min, R_max) of the environment's episodic return, for the regret signal.
        **kwargs: passed to :class:`chuck.ChuckOptimizer`.
    """

    def __init__(
        self, policy: Any = "default", return_range: tuple[float, float] | None = None, verbose: int = 0, **kwargs: Any
    ) -> None:
        super().__init__(verbose)
        self.chuck_policy, self.return_range, self.kwargs = policy, return_range, kwargs
        #: the wrapped optimizers: ``[policy.optimizer]``, or ``[actor's, critic's]`` (SAC, TD3, DDPG)
        self.optimizers: list[ChuckOptimizer] = []

    @property
    def optimizer(self) -> ChuckOptimizer | None:
        """The first wrapped optimizer (the only one for PPO, A2C and DQN; the actor's for SAC and TD3)."""
        return self.optimizers[0] if self.optimizers else None

    def _on_training_start(self) -> None:
        pol = self.model.policy
        owners = [pol] if isinstance(getattr(pol, "optimizer", None), torch.optim.Optimizer) else []
        owners = owners or [net for net in (getattr(pol, "actor", None), getattr(pol, "critic", None)) if net is not None]
        kwargs = dict(self.kwargs)
        planned = planned_optimizer_steps(self.model, self.locals.get("total_timesteps"))
        if planned is not None:
            kwargs.setdefault("total_steps", planned)
        self.optimizers = []
        for net in owners:
            opt = net.optimizer
            if isinstance(opt, ChuckOptimizer) and opt.closed:  # left by an earlier learn call: its run is over
                opt = opt.optimizer
            if not isinstance(opt, ChuckOptimizer):  # (one the user wrapped themselves is kept as it is)
                opt = ChuckOptimizer(opt, self.chuck_policy, model=net, **kwargs)
                # SB3 computes its losses inside train(): the only loss chuck gets is the regret, and only
                # with return_range once episodes have ended (module doc); nothing a user could change
                opt.advise = False
            net.optimizer = opt
            self.optimizers.append(opt)
        if not self.optimizers:
            raise TypeError(
                f"{type(pol).__name__} has no optimizer chuck knows where to find "
                "(policy.optimizer, or policy.actor.optimizer and policy.critic.optimizer)"
            )

    def _regret(self) -> float | None:
        if self.return_range is None or not self.model.ep_info_buffer:
            return None
        lo, hi = self.return_range
        r = float(np.mean([ep["r"] for ep in self.model.ep_info_buffer]))
        return max(1e-3, (hi - r) / (hi - lo))

    def _on_rollout_end(self) -> None:
        regret = self._regret()
        if regret is not None:
            for opt in self.optimizers:
                opt.observe(val_loss=regret)
                opt.record_loss(regret)

    def _on_step(self) -> bool:
        return True

    def _on_training_end(self) -> None:
        for opt in self.optimizers:
            opt.close()


def planned_optimizer_steps(model: Any, total_timesteps: Any) -> int | None:
    """Optimizer steps a PPO or A2C ``learn(total_timesteps)`` call takes from where ``model`` stands.

    SB3's on-policy loop collects ``n_steps`` per environment, then trains, until ``total_timesteps``
    (in ``learn``'s locals, already raised by ``num_timesteps`` when it does not reset them) is reached:
    PPO trains ``n_epochs`` passes of ``ceil(n_steps * n_envs / batch_size)`` minibatches, A2C one step.
    ``None`` for any other algorithm (see the module).
    """
    from stable_baselines3 import A2C, PPO

    if not isinstance(total_timesteps, int) or not isinstance(model, (PPO, A2C)):
        return None
    per_rollout = model.n_steps * model.n_envs
    rollouts = math.ceil(max(0, total_timesteps - model.num_timesteps) / per_rollout)
    per_train = model.n_epochs * math.ceil(per_rollout / model.batch_size) if isinstance(model, PPO) else 1
    return rollouts * per_train or None
