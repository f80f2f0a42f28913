"""stable-baselines3: ``model.learn(..., callback=ChuckSB3Callback("heuristic", return_range=(0, 500)))``.

At training start the callback wraps ``model.policy.optimizer`` in a
``ChuckOptimizer``. SB3 rewrites ``group["lr"]`` from its schedule before every
update; chuck's multiplier applies on top of whatever SB3 wrote (the multiplier
design, exercised end to end).

Which optimizers: the policy's one (``policy.optimizer``: PPO, A2C, DQN), or, for the
actor-critic algorithms that give each network its own (SAC, TD3, DDPG), the actor's and the
critic's, each wrapped with its own network as ``model`` and its own copy of the policy. SAC's
entropy-coefficient optimizer (one scalar) is left alone.

Progress signal: SB3's losses say little about progress, so the callback reports
the mean episodic return (SB3's ``ep_info_buffer``) turned into a positive regret
``(R_max - R) / (R_max - R_min)`` when ``return_range`` is given, exactly as
chuck's zoo RL tasks do; without it chuck watches gradients and weights only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

try:
    from stable_baselines3.common.callbacks import BaseCallback
except ImportError as exc:  # pragma: no cover
    raise ImportError("chuck.integrations.sb3 needs stable-baselines3: pip install 'chuck[all]'") from exc

from chuck.optimizer import ChuckOptimizer


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
        self.optimizers = []
        for net in owners:
            if not isinstance(net.optimizer, ChuckOptimizer):
                net.optimizer = ChuckOptimizer(net.optimizer, self.chuck_policy, model=net, **self.kwargs)
            self.optimizers.append(net.optimizer)
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
