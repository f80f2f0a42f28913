"""Residual policies: a built-in rule's action plus a learned correction, summed in one place.

The learned policy does not act from scratch: PPO learns corrections to a prior's action (residual
policy learning: Silver et al. 2018, "Residual Policy Learning"; Johannink et al. 2019, "Residual
Reinforcement Learning for Robot Control"), so a policy that learned nothing acts as the prior. The
correction enters in two places, and :meth:`ResidualPolicy.compose` (the prior acts, then
:meth:`ResidualPolicy.combine` adds the correction) is the sum for both:

* meta-training: :class:`chuck.envs.TrainingControlEnv` adds the agent's action to its prior's;
* deployment: :class:`chuck.policies.learned.LearnedPolicy` adds its actor's output to the prior its
  card names (its ``residual``).

A policy trained on one sum and deployed with another would act on a rule it never learned.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from chuck.policies.base import Policy


class ResidualPolicy(Policy):
    """``act(obs) = clip(prior.act(obs) + correction(obs), -1, 1)``.

    The residual carries its prior's specs, warm-up, anneal and interval (the schedule the correction
    was learned under), and its state is the prior's.

    Args:
        prior: the built-in rule that is corrected.
        correction: observation -> correction in the action space ``[-1, 1]^d`` (a learned actor's
            clipped output); ``None`` when the correction comes from outside through :meth:`compose`
            (the meta-environment's agent).
    """

    name = "residual"

    def __init__(self, prior: Policy, correction: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        self.prior = prior
        self._rule = prior
        self.correction = correction
        self.version = prior.id
        self.observation_version, self.action_version = prior.observation_version, prior.action_version
        self.interval, self.warmup, self.anneal = prior.interval, prior.warmup, prior.anneal

    def compose(self, observation: np.ndarray, correction: Any) -> np.ndarray:
        """The action for ``correction`` at ``observation``: the prior acts (one decision of its own) and
        :meth:`combine` adds the correction."""
        return self.combine(self._rule.act(observation), correction)

    @staticmethod
    def combine(prior_action: Any, correction: Any) -> np.ndarray:
        """``clip(prior_action + correction, -1, 1)``, the one definition of a residual's action. The sum
        is taken in ``correction``'s dtype (deployment's float32 actor output, the environment's float64
        action), so each keeps the arithmetic it always had."""
        correction = np.asarray(correction)
        return np.clip(np.asarray(prior_action, dtype=correction.dtype) + correction, -1.0, 1.0)

    def act(self, observation: np.ndarray) -> np.ndarray:
        if self.correction is None:
            raise RuntimeError("this residual's correction comes from outside: call compose(observation, correction)")
        correction = self.correction(observation)  # before the prior acts: it may refuse the observation
        return self.compose(observation, correction)

    def explain(self, observation: np.ndarray) -> dict[str, dict[str, float]]:
        """The prior's reasons, each marked ``prior: ``."""
        return {d: {f"prior: {k}": v for k, v in reasons.items()} for d, reasons in self._rule.explain(observation).items()}

    def reset(self) -> None:
        self._rule.reset()

    def state_dict(self) -> dict[str, Any]:
        return {"prior": self._rule.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "prior" in state:
            self._rule.load_state_dict(state["prior"])

    def validate_state_dict(self, state: dict[str, Any]) -> str | None:
        prior = state.get("prior", {})
        if not isinstance(prior, dict):
            return f"prior must be a dict, got {type(prior).__name__}"
        why = self._rule.validate_state_dict(prior)
        return f"prior.{why}" if why else None


def make_prior(spec: str | None, observation_version: str) -> Policy | None:
    """The prior named ``spec`` for a residual on observation spec ``observation_version``, or None.

    ``spec`` is a shipped step-size prior (``"prior@10"``, ``"prior@15"``) or a name given to
    :func:`chuck.policies.register_policy` whose policy reads the same observation spec.

    Raises:
        ValueError: an unknown name, or a registered policy built for another observation spec.
    """
    if spec is None:
        return None
    from chuck.core.loading import is_registered, load_policy
    from chuck.policies.prior import CONFIGS, StepSizePrior

    name, _, version = spec.partition("@")
    if name == "prior" and version in CONFIGS:
        return StepSizePrior(observation_version=observation_version, version=version)
    if is_registered(spec):
        prior = load_policy(spec)
        if prior.observation_version != observation_version and isinstance(prior, StepSizePrior):
            # a step-size rule (a lab variant) reads its features by name from any spec that has them
            prior = type(prior)(observation_version, config=prior.config)
        if prior.observation_version != observation_version:
            raise ValueError(
                f"prior {spec!r} reads observation spec v{prior.observation_version}, the residual v{observation_version}"
            )
        return prior
    raise ValueError(f"unknown prior {spec!r}")  # the card check refuses it first
