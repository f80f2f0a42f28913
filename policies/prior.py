"""The "prior" policy: a built-in step-size controller that a learned policy corrects.

A policy that learned nothing should already be as good as a careful practitioner
(the policy issue, lever 2). The prior moves the learning rate by a multiplicative
hypergradient rule (Baydin et al. 2018, "Online learning rate adaptation with
hypergradient descent"), read off the observation's ``step.hypergrad``: the EMA of
the cosine between each new gradient and the last step's descent direction.

* positive (the loss still falls along the last step): the lr is too low, raise it
  in proportion to how far the cosine is above its set point;
* around the set point: hold (a tuned run is left alone);
* negative, or steps far larger than the Prodigy-style distance estimate while the
  gradients no longer follow them (``step.log10_update_over_dhat``): lower it;
* instability (skipped steps, loss spikes): lower it at once, as the heuristic does.

The set point and gain come from ``experiments/stepsize_signals.py`` on the *train*
families: at each family's best constant AdamW lr the cosine averages about +0.03,
two decades below it about +0.26, a decade above it about -0.06 (docs/results.md).
Only the lr dimension is driven; weight decay, clipping and dropout are left to the
learned residual (and to the guardrails).
"""

from __future__ import annotations

import math

import numpy as np

from chuck.observation import ObservationSpec
from chuck.policies.base import Policy

#: Hypergradient cosine at which the lr is held (measured at the best constant lr, see above).
SET_POINT = 0.03
#: No move while the cosine is within this of the set point: one minibatch gradient is noisy,
#: and a run started at a tuned lr must not be pushed around (the issue's harm target).
DEAD_BAND = 0.04
#: Action per unit of cosine above the set point (a cosine of +0.23 above it, two decades too
#: low, gives the full x3 step of ActionSpec v2).
GAIN = 4.5


class StepSizePrior(Policy):
    """The hypergradient step-size rule described in the module docstring."""

    name = "prior"
    version = "1"

    def __init__(self, observation_version: str | None = None) -> None:
        self.spec = ObservationSpec(observation_version) if observation_version else ObservationSpec()
        self.observation_version = self.spec.version
        self._why: dict[str, dict[str, float]] = {}

    def act(self, observation: np.ndarray) -> np.ndarray:
        f = self.spec.as_dict(observation)
        lr, why = self.lr_action(f)
        self._why = {"lr": {why: float(np.sign(lr))}} if lr != 0.0 and why else {}
        return np.array([lr, 0.0, 0.0, 0.0], dtype=np.float32)

    @staticmethod
    def lr_action(f: dict[str, float]) -> tuple[float, str]:
        """The lr action and the feature that decided it."""
        if f["ctrl.skip_rate"] > 0 or f["loss.spike"] > math.log(3.0):
            return -1.0, "instability (skipped steps or a loss spike)"
        h = f.get("step.hypergrad", 0.0)
        if f.get("step.log10_update_over_dhat", -1.0) >= 1.0 and h <= SET_POINT:
            return -1.0, "step.log10_update_over_dhat"  # steps dwarf any distance the gradients support
        excess = h - SET_POINT
        if abs(excess) <= DEAD_BAND:
            return 0.0, ""
        excess -= math.copysign(DEAD_BAND, excess)
        return float(np.clip(GAIN * excess, -1.0, 1.0)), "step.hypergrad"

    def explain(self, observation: np.ndarray) -> dict[str, dict[str, float]]:
        return {d: dict(r) for d, r in self._why.items()}
