"""The "prior" policy: a built-in step-size controller that a learned policy corrects.

A policy that learned nothing should already be as good as a careful practitioner
(the policy issue, lever 2). The prior moves the learning rate by a multiplicative
hypergradient rule (Baydin et al. 2018, "Online learning rate adaptation with
hypergradient descent"), read off the observation's ``step.hypergrad``: the EMA of
the cosine between each new gradient and the last step's descent direction.

* clearly positive (the loss still falls along the last step): the lr is several
  times too low, raise it, more the higher the cosine;
* near zero: hold (a tuned run is left alone);
* negative (the last steps overshot): lower it;
* instability (steps the guardrails skipped, a rising loss with growing gradients):
  lower it at once.

The Prodigy-style distance bound (``step.log10_update_over_dhat``) is left to the
learned residual: under batch normalization the weights are scale-invariant, the
bound's convexity argument fails and it reads "steps far too large" at a well-tuned
lr (a ResNet of the validation split lost 38x at its best lr when the prior trusted it).

The thresholds come from ``experiments/stepsize_signals.py`` on *train* families: at
each family's best constant AdamW lr the cosine averages about +0.03, a factor of 3
below it +0.11, two decades below it +0.26, a decade above it -0.06 (docs/results.md);
the validation split chose between this rule and a symmetric one (see the results).
Only the lr dimension is driven; weight decay, clipping and dropout are left to the
learned residual (and to the guardrails).
"""

from __future__ import annotations

import math

import numpy as np

from chuck.observation import ObservationSpec
from chuck.policies.base import Policy

#: Hypergradient cosines between these leave the lr alone. At each train family's best constant
#: lr the cosine averages about +0.03 and a factor of 3 below it about +0.11; one minibatch
#: gradient is noisy, and a run started at a tuned lr must not be pushed around (the issue's
#: harm target), so the prior acts only on clear evidence: above RAISE_AT the lr is several
#: times too low, below LOWER_AT the last steps overshot.
RAISE_AT = 0.12
LOWER_AT = -0.05
#: Smallest move once outside the band, and the action per unit of cosine beyond it: two decades
#: too low (cosine ~0.26) gives nearly the full x3 step of ActionSpec v2.
BASE_STEP = 0.4
GAIN = 4.0


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
        # Real instability only: the guardrails threw steps away (a 10x spike or a non-finite
        # value), or the loss climbs while the gradients grow. A single minibatch 3x above the
        # median is routine on small data with small losses; cutting on it harmed tuned runs.
        if f["ctrl.skip_rate"] > 0 or (f["loss.log_slope"] > 0.5 and f["grad.norm_trend"] > math.log(3.0)):
            return -1.0, "instability (skipped steps, or a rising loss with growing gradients)"
        h = f.get("step.hypergrad", 0.0)
        if h > RAISE_AT:
            return float(min(1.0, BASE_STEP + GAIN * (h - RAISE_AT))), "step.hypergrad"
        if h < LOWER_AT:
            return float(max(-1.0, -BASE_STEP + GAIN * (h - LOWER_AT))), "step.hypergrad"
        return 0.0, ""

    def explain(self, observation: np.ndarray) -> dict[str, dict[str, float]]:
        return {d: dict(r) for d, r in self._why.items()}
