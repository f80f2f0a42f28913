"""The "heuristic" policy: hand-written rules over the monitors.

It reads the same observation a learned policy reads (through
``ObservationSpec.as_dict``), so it is a baseline *and* a fallback for the
learned policy when observations fall outside what it was trained on.

Rules, in priority order for the learning rate:

1. Instability (loss spike > x3, sign-flipping updates, rising loss with
   gradients growing): halve the lr.
2. Updates far too large (update/weight ratio > 10^-1.5): halve the lr.
3. Plateau for a whole window: warm restart, double the lr once, then wait
   ``restart_cooldown`` decisions (SGDR, Loshchilov & Hutter 2017, restarts the
   lr on a schedule; here the plateau triggers it).
4. Updates tiny (ratio < 10^-4, where the weights monitor warns) or steady convergence with small noise
   while updates are still below ~10^-2.5 of the weights: speed up by x2 or x1.41.

Overfitting (Prechelt GL > 2% with a rising validation loss) raises weight
decay and dropout; exploding gradients switch clipping on and tighten it;
clipping relaxes when it bites on most steps without trouble.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from chuck.core import statecheck as check
from chuck.core.observation import ObservationSpec
from chuck.policies.base import Policy


class HeuristicPolicy(Policy):
    """Rule-based controller. See the module docstring for the rules and their sources.

    Args:
        restart_cooldown: decisions to wait after a warm restart before another.
        observation_version: the observation spec to read (default: the newest).
    """

    name = "heuristic"
    version = "1"

    def __init__(self, restart_cooldown: int = 10, observation_version: str | None = None) -> None:
        # as a fallback it reads the observation of the policy it stands in for (any known version)
        self.spec = ObservationSpec(observation_version)
        self.observation_version = self.spec.version
        self.restart_cooldown = restart_cooldown
        self._cooldown = 0
        self._last_reasons: dict[str, dict[str, float]] = {}

    def reset(self) -> None:
        self._cooldown = 0

    def act(self, observation: np.ndarray) -> np.ndarray:
        f = self.spec.as_dict(observation)
        lr = wd = clip = drop = 0.0
        lr_why = clip_why = reg_why = ""
        self._cooldown = max(0, self._cooldown - 1)

        unstable = (
            f["loss.spike"] > math.log(3.0)
            or f["weights.update_cosine"] < -0.5
            or (f["loss.log_slope"] > 0.5 and f["grad.norm_trend"] > math.log(3.0))
            or f["ctrl.skip_rate"] > 0
        )
        has_updates = f["weights.update_ratio_log10"] != -3.0 or f["weights.update_cosine"] != 0.0
        if unstable:
            lr, lr_why = -1.0, "instability (loss spike, sign-flipping updates or skipped steps)"
        elif has_updates and f["weights.update_ratio_log10"] > -1.5:
            lr, lr_why = -1.0, "weights.update_ratio_log10"
        elif f["loss.plateau"] >= 1.0 and self._cooldown == 0:
            lr, lr_why = 1.0, "loss.plateau"
            self._cooldown = self.restart_cooldown
        elif has_updates and f["weights.update_ratio_log10"] < -4.0:  # the weights monitor's warn line
            lr, lr_why = 1.0, "weights.update_ratio_log10"
        elif (
            f["loss.log_slope"] < -0.05
            and f["loss.noise_to_progress"] < 0.5
            and f["loss.spike"] < math.log(1.5)
            and f["weights.update_ratio_log10"] < -2.5  # CS231n's ~1e-3: no faster than that
        ):
            lr, lr_why = 0.5, "loss.log_slope"
        elif f["loss.noise_to_progress"] > 0.9 and f["loss.log_slope"] > 0:
            lr, lr_why = -0.5, "loss.noise_to_progress"

        if f["loss.has_val"] > 0 and f["loss.overfit_gl"] > 0.02 and f["loss.val_trend"] > 0:
            wd = drop = 1.0
            reg_why = "loss.overfit_gl"

        if f["grad.norm_log_ratio_initial"] > math.log(10.0) or f["loss.spike"] > math.log(3.0):
            clip, clip_why = -1.0, "grad.norm_log_ratio_initial"
        elif f["ctrl.clip_on"] > 0 and f["grad.clip_fraction"] > 0.5 and not unstable:
            clip, clip_why = 0.5, "grad.clip_fraction"

        # the rule that fired, per dimension, signed like the action it caused
        moves = {"lr": (lr, lr_why), "weight_decay": (wd, reg_why), "clip": (clip, clip_why), "dropout": (drop, reg_why)}
        self._last_reasons = {dim: {why: float(np.sign(a))} for dim, (a, why) in moves.items() if a != 0.0 and why}
        return np.array([lr, wd, clip, drop], dtype=np.float32)

    def explain(self, observation: np.ndarray) -> dict[str, dict[str, float]]:
        """The rule behind each dimension's last move: ``{dimension: {rule: +1 or -1}}``."""
        return {d: dict(r) for d, r in self._last_reasons.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"cooldown": self._cooldown}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._cooldown = int(state.get("cooldown", 0))

    def validate_state_dict(self, state: dict[str, Any]) -> str | None:
        return check.count("cooldown", state.get("cooldown", 0))
