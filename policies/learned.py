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

from chuck.core.observation import ObservationSpec
from chuck.policies.base import Policy

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

    def attribution(self, obs: torch.Tensor, dim: int) -> np.ndarray:
        """Signed gradient x input of output ``dim`` on the normalized features, normalized to sum |.| = 1
        (all zeros when the output does not depend on the input)."""
        z = self.normalize(obs).requires_grad_(True)
        self.action_net(self.policy_net(z))[0, dim].backward()
        assert z.grad is not None
        return _unit_l1((z.grad * z).detach().reshape(-1).numpy())


def _unit_l1(attr: np.ndarray) -> np.ndarray:
    """``attr`` scaled to sum |.| = 1; all zeros when it is zero or not finite."""
    total = float(np.abs(attr).sum())
    return attr / total if total > 0 and np.isfinite(total) else np.zeros_like(attr)


class ActorEnsemble(nn.Module):
    """Several actors of one observation and action spec, acting as the mean of their clipped actions.

    The residuals of independently trained runs on the same prior (the policy issue's "several
    training seeds"): where the runs agree the correction is kept, where they disagree it shrinks
    toward the prior. Each member keeps its own observation normalization. State-dict keys are
    ``members.<i>.<ActorNetwork key>`` (artifact card: ``architecture.members``).
    """

    def __init__(self, members: list[ActorNetwork]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least two members, got {len(members)}")
        self.members = nn.ModuleList(members)
        self.clip_obs, self.epsilon = members[0].clip_obs, members[0].epsilon

    @property
    def networks(self) -> list[ActorNetwork]:
        """The members, typed (``members`` is the registered ModuleList)."""
        return [m for m in self.members if isinstance(m, ActorNetwork)]

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(obs).clamp(-1.0, 1.0) for m in self.networks]).mean(0)

    def attribution(self, obs: torch.Tensor, dim: int) -> np.ndarray:
        """The members' attributions averaged (each on its own normalized features), normalized to sum |.| = 1."""
        return _unit_l1(np.mean([m.attribution(obs, dim) for m in self.networks], axis=0))


class LearnedPolicy(Policy):
    """A policy loaded from an exported artifact (see :mod:`chuck.policies.artifact`).

    Attributes:
        card: the artifact's JSON card (specs, training, evaluation, checksum).
        obs_low, obs_high: per-feature range of the observations seen in training
            (used by ChuckOptimizer's out-of-distribution check).
    """

    def __init__(self, actor: ActorNetwork | ActorEnsemble, card: dict[str, Any]) -> None:
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
        # a residual policy: the actor learned corrections to a built-in controller's action
        self.prior = make_prior(card.get("prior"), self.observation_version)
        self.warmup = self.prior.warmup if self.prior is not None else None
        self.anneal = self.prior.anneal if self.prior is not None else None
        # card field residual_progress_gate (chuck.policies.derive): while the smoothed training loss is
        # within this log-distance of its start, the residual may not lower the lr (the prior still may)
        self.progress_gate: float | None = card.get("residual_progress_gate")
        self._progress = self._spec.names.index("loss.log_ratio_initial") if self.progress_gate is not None else -1
        # card field residual_cooldown_cap (chuck.policies.derive): in the prior's cooldown the residual may
        # lower the lr but not raise it (the anneal a known budget asks for is the prior's to set)
        self.cooldown_cap: bool = bool(card.get("residual_cooldown_cap", False))

    def reset(self) -> None:
        if self.prior is not None:
            self.prior.reset()

    def state_dict(self) -> dict[str, Any]:
        return {"prior": self.prior.state_dict()} if self.prior is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.prior is not None and "prior" in state:
            self.prior.load_state_dict(state["prior"])

    @torch.no_grad()
    def act(self, observation: np.ndarray) -> np.ndarray:
        obs = torch.as_tensor(self.check_observation(observation)).reshape(1, -1)
        residual = self.actor(obs).clamp(-1.0, 1.0).numpy().reshape(-1)
        if self._gated(obs):
            residual[0] = max(residual[0], 0.0)  # the run has not left its starting loss: no learned lr cut
        if self.prior is None:
            return residual
        prior = np.asarray(self.prior.act(observation), dtype=np.float32)
        if self._capped():
            residual[0] = min(residual[0], 0.0)  # the prior anneals: no learned raise against it
        return np.clip(prior + residual, -1.0, 1.0)

    def _capped(self) -> bool:
        """The cooldown cap holds: the prior's last decision fell in its cooldown (read after ``prior.act``)."""
        return self.cooldown_cap and bool(getattr(self.prior, "in_cooldown", False))

    def _gated(self, obs: torch.Tensor) -> bool:
        """The progress gate holds: the smoothed loss is still within ``progress_gate`` of its start."""
        return self.progress_gate is not None and float(obs[0, self._progress]) > -self.progress_gate

    def explain(self, observation: np.ndarray) -> dict[str, dict[str, float]]:
        """Per action dimension, the signed gradient x input attribution of the actor's output
        (Simonyan et al. 2014; Shrikumar et al. 2016) on normalized features, normalized to
        sum |.| = 1 per dimension; for a residual policy, the prior's own reason is added."""
        from chuck.core.actions import ACTION_DIMS

        obs = torch.as_tensor(self.check_observation(observation)).reshape(1, -1)
        out: dict[str, dict[str, float]] = {}
        lr_out = float(self.actor(obs).detach()[0, 0])
        # the progress gate dropped a learned lr cut, or the cooldown cap a learned raise: nothing to credit
        blocked = (self._gated(obs) and lr_out < 0.0) or (self._capped() and lr_out > 0.0)
        for d, dim in enumerate(ACTION_DIMS):
            attr = self.actor.attribution(obs, d)
            if np.abs(attr).sum() > 0 and not (d == 0 and blocked):
                out[dim] = {n: float(a) for n, a in zip(self._spec.names, attr) if a != 0.0}
        if self.prior is not None:
            for dim, reasons in self.prior.explain(observation).items():
                out.setdefault(dim, {}).update({f"prior: {k}": v for k, v in reasons.items()})
        return out

    def out_of_distribution(self, observation: np.ndarray, margin: float = 0.0) -> list[str]:
        """Names of features outside the range seen in training (widened by ``margin`` x range)."""
        if self.obs_low is None or self.obs_high is None:
            return []
        obs = np.asarray(observation, dtype=np.float32).reshape(-1)
        width = (self.obs_high - self.obs_low) * margin
        bad = (obs < self.obs_low - width) | (obs > self.obs_high + width)
        return [n for n, b in zip(self._spec.names, bad) if b]


def make_prior(spec: str | None, observation_version: str) -> Policy | None:
    """The built-in controller named ``spec`` ("prior@N"), or None; ValueError for an unknown one."""
    if spec is None:
        return None
    from chuck.policies.prior import VERSIONS, StepSizePrior

    name, _, version = spec.partition("@")
    if name == "prior" and version in VERSIONS:
        return StepSizePrior(observation_version=observation_version, version=version)
    raise ValueError(f"unknown prior {spec!r}")  # the card check refuses it first
