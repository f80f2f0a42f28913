"""The Policy interface: observation -> action, plus the metadata that ties it to specs.

Every policy chuck can run (the built-in "constant" and "heuristic", the learned
PPO actor, a user's own) implements this class. ``tests/policies/test_policy_contract.py``
runs the contract against each of them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import cache
from typing import Any

import numpy as np

from chuck.core.actions import ActionSpec
from chuck.core.observation import ObservationSpec


class Policy(ABC):
    """Maps an encoded observation (``ObservationSpec.encode``) to an action in ``[-1, 1]^d``.

    Contract:

    * ``act(obs)`` takes a float32 vector of ``len(ObservationSpec(version).names)`` entries
      and returns a vector of ``len(ActionSpec.dims)`` entries. It may return anything on
      bad input: ``ChuckOptimizer`` validates the output and holds on NaN, a wrong shape or
      an exception, so a policy can never crash a user's training. The built-ins refuse an
      observation of another size with a ValueError naming both sizes (:meth:`check_observation`).
    * ``name``/``version`` identify it; ``observation_version``/``action_version`` name the
      specs it was built for, and the optimizer refuses a mismatch at construction.
    * ``state_dict()`` holds only weights_only-safe types; it goes into chuck's checkpoint.
    * ``interval``: the decision interval the policy was trained or tuned for (``None``: any).
    * ``warmup``: steps of linear lr warm-up the policy was tuned with (``None``: none); a
      per-step schedule the optimizer applies, not a decision.
    * ``anneal``: the share of a known budget (``total_steps``) over which the optimizer decays the lr
      linearly toward zero, per step, at the end of the run (``None``: none); a schedule like ``warmup``.
    * ``prior``: the built-in rule a learned residual corrects (``None``: not a residual). In a run that
      reports no training loss the controller asks it instead of the whole policy.
    * ``obs_low``/``obs_high``: per feature, the range of the observations the policy was trained on
      (``None``: unknown); :meth:`out_of_distribution` reads them, and the controller's fallback names them.
    """

    name: str = "policy"
    version: str = "0"
    observation_version: str = ObservationSpec().version
    action_version: str = ActionSpec.version
    interval: int | None = None
    warmup: int | None = None
    anneal: float | None = None
    prior: Policy | None = None
    obs_low: np.ndarray | None = None
    obs_high: np.ndarray | None = None
    #: Whether ``ChuckOptimizer`` turns its guardrails on under this policy when the user leaves
    #: ``guardrails`` unset: a policy that steers the run wants them; a pure observer does not.
    guardrails_by_default: bool = True
    #: Whether ``ChuckOptimizer`` starts the run with a safe start (``chuck.core.safe_start``: a geometric lr
    #: ramp that stops at the first sign of blow-up) when the user leaves ``safe_start`` unset.
    safe_start: bool = False

    @property
    def id(self) -> str:
        return f"{self.name}@{self.version}"

    @abstractmethod
    def act(self, observation: np.ndarray) -> np.ndarray:
        """One decision."""

    def check_observation(self, observation: Any) -> np.ndarray:
        """``observation`` as a float32 vector, refused (ValueError) unless it has the entries of the
        observation spec this policy was built for."""
        obs = np.asarray(observation, dtype=np.float32).reshape(-1)
        size = _spec_size(self.observation_version)
        if obs.shape[0] != size:
            raise ValueError(f"observation has {obs.shape[0]} entries, spec v{self.observation_version} has {size}")
        return obs

    def explain(self, observation: np.ndarray) -> dict[str, dict[str, float]]:
        """Why the last action, per action dimension: ``{dimension: {feature or rule: signed weight}}``.

        A positive weight pushed that dimension up. Empty when the policy cannot tell. (A flat
        ``{feature: weight}`` mapping is accepted too and attributed to every dimension that moved.)
        """
        return {}

    def out_of_distribution(self, observation: np.ndarray, margin: float = 0.0) -> list[str]:
        """Names of the features outside ``[obs_low, obs_high]`` widened by ``margin`` x its width; empty
        when the policy knows no range (the built-in rules are defined everywhere)."""
        if self.obs_low is None or self.obs_high is None:
            return []
        obs = np.asarray(observation, dtype=np.float32).reshape(-1)
        width = (self.obs_high - self.obs_low) * margin
        bad = (obs < self.obs_low - width) | (obs > self.obs_high + width)
        return [n for n, b in zip(_spec_names(self.observation_version), bad) if b]

    def reset(self) -> None:  # noqa: B027 - optional hook
        """Forget per-run state; the controller calls it when a run starts."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        pass

    def validate_state_dict(self, state: dict[str, Any]) -> str | None:
        """Why ``state`` cannot be loaded (``None`` when it can). The optimizer asks before it loads any
        of a checkpoint: a policy with state checks every field of it here, so that a bad checkpoint is
        refused whole instead of making every later decision fail."""
        return None

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "observation_version": self.observation_version,
            "action_version": self.action_version,
            "interval": self.interval,
            "warmup": self.warmup,
            "anneal": self.anneal,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r})"


@cache
def _spec_names(version: str) -> tuple[str, ...]:
    return tuple(ObservationSpec(version).names)


def _spec_size(version: str) -> int:
    return len(_spec_names(version))
