"""The learned policy at deployment: a torch-only MLP actor with bundled observation normalization.

It mirrors stable-baselines3's ``MlpPolicy`` actor for a Box action space
(``mlp_extractor.policy_net`` then ``action_net``; the deterministic action is
the Gaussian mean, clipped to the action space) and ``VecNormalize``'s
observation transform, ``clip((obs - mean) / sqrt(var + eps), -clip, clip)``.
No SB3 import is needed to run it; ``test_export_parity`` in
``tests/policies/test_artifact.py`` checks that both give the same action.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from chuck.core.actions import ACTION_DIMS
from chuck.core.observation import ObservationSpec
from chuck.policies.base import Policy
from chuck.policies.residual import ResidualPolicy, make_prior

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


class ActorNetwork(nn.Module):
    """Normalization + MLP actor. State-dict keys are part of the artifact format."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: list[int],
        activation: str = "tanh",
        clip_obs: float = 10.0,
        epsilon: float = 1e-8,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = obs_dim
        for h in hidden:
            layers += [nn.Linear(d, h), ACTIVATIONS[activation]()]
            d = h
        self.policy_net = nn.Sequential(*layers)
        self.action_net = nn.Linear(d, act_dim)
        self.obs_mean: torch.Tensor
        self.obs_var: torch.Tensor
        self.register_buffer("obs_mean", torch.zeros(obs_dim, dtype=torch.float64))
        self.register_buffer("obs_var", torch.ones(obs_dim, dtype=torch.float64))
        self.clip_obs, self.epsilon = clip_obs, epsilon

    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        z = (obs.double() - self.obs_mean) / torch.sqrt(self.obs_var + self.epsilon)
        return z.clamp(-self.clip_obs, self.clip_obs).float()

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Deterministic action (unclipped mean) for raw observations."""
        return self.action_net(self.policy_net(self.normalize(obs)))

    def attributions(self, obs: torch.Tensor) -> np.ndarray:
        """Signed gradient x input of every output on the normalized features of one observation (shape
        ``(1, n)`` or ``(n,)``), one row per output, each normalized to sum |.| = 1 (all zeros where the
        output does not depend on the input).

        One forward and one backward pass for all outputs: the input is repeated once per output and
        row d backpropagates output d only (rows of a batch do not interact). A pass per output made the
        explanation about three times as costly at every decision of a run. The gradient is taken with
        respect to the input alone, so the actor's parameters collect none.
        """
        if obs.dim() > 1 and obs.shape[0] != 1:
            raise ValueError(f"attributions explain one observation at a time, got a batch of {obs.shape[0]}")
        dims = self.action_net.out_features
        with torch.enable_grad():
            z = self.normalize(obs).reshape(1, -1).expand(dims, -1).clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.action_net(self.policy_net(z)).diagonal().sum(), z)
        return np.stack([_unit_l1(row) for row in (grad * z).detach().numpy()])


def _unit_l1(attr: np.ndarray) -> np.ndarray:
    """``attr`` scaled to sum |.| = 1; all zeros when it is zero or not finite."""
    total = float(np.abs(attr).sum())
    return attr / total if total > 0 and np.isfinite(total) else np.zeros_like(attr)


class LearnedPolicy(Policy):
    """A policy loaded from an exported artifact (see :mod:`chuck.policies.artifact`).

    With a ``prior`` in its card the actor's output is a correction to that built-in rule's action
    (:class:`~chuck.policies.residual.ResidualPolicy`, the sum meta-training learned on); without one it
    is the action.

    Attributes:
        card: the artifact's JSON card (specs, training, evaluation, checksum).
        obs_low, obs_high: per-feature range of the observations seen in training
            (used by ChuckOptimizer's out-of-distribution check).
        residual: the prior plus this actor, or None without a prior.
    """

    def __init__(self, actor: ActorNetwork, card: dict[str, Any]) -> None:
        self.actor = actor.eval()
        self.card = card
        self.name = card.get("name", "learned")
        self.version = str(card.get("version", "0"))
        self.observation_version = str(card["observation"]["version"])
        self.action_version = str(card["action"]["version"])
        self.interval = card.get("interval")
        self._spec = ObservationSpec(self.observation_version)
        stats = card.get("observation_stats") or {}
        self.obs_low = np.asarray(stats["low"], dtype=np.float32) if "low" in stats else None
        self.obs_high = np.asarray(stats["high"], dtype=np.float32) if "high" in stats else None
        self.prior = make_prior(card.get("prior"), self.observation_version)
        self.residual = ResidualPolicy(self.prior, self.correction) if self.prior is not None else None
        self.warmup = self.prior.warmup if self.prior is not None else None
        self.anneal = self.prior.anneal if self.prior is not None else None

    def reset(self) -> None:
        if self.residual is not None:
            self.residual.reset()

    def state_dict(self) -> dict[str, Any]:
        return self.residual.state_dict() if self.residual is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.residual is not None:
            self.residual.load_state_dict(state)

    def validate_state_dict(self, state: dict[str, Any]) -> str | None:
        return self.residual.validate_state_dict(state) if self.residual is not None else None

    @torch.no_grad()
    def correction(self, observation: np.ndarray) -> np.ndarray:
        """The actor's deterministic output for ``observation``, clipped to the action space: the whole
        action without a prior, the correction to the prior's with one."""
        obs = torch.as_tensor(self.check_observation(observation)).reshape(1, -1)
        return self.actor(obs).clamp(-1.0, 1.0).numpy().reshape(-1)

    def act(self, observation: np.ndarray) -> np.ndarray:
        return self.residual.act(observation) if self.residual is not None else self.correction(observation)

    def explain(self, observation: np.ndarray) -> dict[str, dict[str, float]]:
        """Per action dimension, the signed gradient x input attribution of the actor's output
        (Simonyan et al. 2014; Shrikumar et al. 2016) on normalized features, normalized to
        sum |.| = 1 per dimension; for a residual policy, the prior's own reason is added."""

        obs = torch.as_tensor(self.check_observation(observation)).reshape(1, -1)
        out: dict[str, dict[str, float]] = {}
        for dim, attr in zip(ACTION_DIMS, self.actor.attributions(obs), strict=True):
            if np.abs(attr).sum() > 0:
                out[dim] = {n: float(a) for n, a in zip(self._spec.names, attr) if a != 0.0}
        if self.residual is not None:
            for dim, reasons in self.residual.explain(observation).items():
                out.setdefault(dim, {}).update(reasons)
        return out
