"""The "constant" policy: never changes anything (chuck as a pure observer; guardrails only if asked for)."""

from __future__ import annotations

import numpy as np

from chuck.core.actions import ACTION_DIMS
from chuck.policies.base import Policy


class ConstantPolicy(Policy):
    """Always returns the zero action (hold every hyperparameter)."""

    name = "constant"
    version = "1"
    guardrails_by_default = False  # a pure observer: bit-identical to the bare optimizer unless guardrails are asked for

    def act(self, observation: np.ndarray) -> np.ndarray:
        self.check_observation(observation)
        return np.zeros(len(ACTION_DIMS), dtype=np.float32)
