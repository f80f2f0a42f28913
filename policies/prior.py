"""The step-size prior: the rule a learned residual corrects, and alone the policy ``"prior"``.

A policy that learned nothing should already act like a careful practitioner. The prior drives the
learning rate only, by a multiplicative hypergradient rule (Baydin et al. 2018, "Online learning rate
adaptation with hypergradient descent") read off ``step.hypergrad``, the EMA of the cosine between each
new gradient and the last step's descent direction:

* clearly positive (the loss still falls along the last step): the lr is too low, raise it, more the
  higher the cosine;
* near zero: hold (a tuned run is left alone);
* negative (the last steps overshot): lower it;
* instability (steps the guardrails skipped, a rising loss with growing gradients): lower it at once.

Around that core, each part switched by a :class:`PriorConfig`: a cooldown at the end of a known
budget, a validation guard, a warm-up and a gate on raises by the size of the steps. Weight decay,
clipping and dropout are left to the learned residual and to the guardrails.

Two configurations ship: ``prior@10``, the prior under the shipped default policy (its card's
``prior``), and ``prior@15`` (:data:`LATEST`: ``load_policy("prior")``, and the prior new residuals
train on by default). Why each part is there and what was tried and rejected: docs/design/step-size-prior.md;
the rejected versions live in ``experiments/prior_variants.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from chuck.core import statecheck as check
from chuck.core.actions import ACTION_VERSIONS
from chuck.core.observation import ObservationSpec
from chuck.policies.base import Policy

#: Hypergradient cosines between LOWER_AT and RAISE_AT leave the lr alone. At each train family's best
#: constant AdamW lr the cosine averages about +0.03, a factor of 3 below it +0.11, a decade above it
#: -0.06 (``experiments/stepsize_signals.py``); one minibatch gradient is noisy and a run started at a
#: tuned lr must not be pushed around, so the rule acts on clear evidence only.
RAISE_AT = 0.12
LOWER_AT = -0.05
#: The smallest move outside the band, and the move per unit of cosine beyond it: two decades too low
#: (a cosine of about 0.26) gives nearly the full x3 step of action spec v2.
BASE_STEP = 0.4
GAIN = 4.0

#: Cooldown: with ``total_steps`` known, the last COOLDOWN of the run decays the lr linearly toward FLOOR
#: of its value where the cooldown began, and raises stop (an annealed lr always reads "too low"). This is
#: the decay of warmup-stable-decay, which matches cosine annealing at the same budget (Hägele et al. 2024,
#: "Scaling Laws and Compute-Optimal Training Beyond Fixed Training Durations"); longer than their 20%
#: because a zoo-sized run (150-600 steps, a decision every 20) has few decisions left for the descent.
COOLDOWN = 0.3
FLOOR = 0.02

#: Validation guard on Prechelt's generalization loss GL = val / best val - 1 (Prechelt 1998, "Early
#: stopping - but when?", whose criteria use GL of 1-5%): past GUARD_GL raises are dropped (the training
#: loss says "faster", the held-out loss says the run is past its best), past CUT_GL the lr is halved,
#: the factor of ReduceLROnPlateau's common setting.
GUARD_GL = 0.05
CUT_GL = 0.2

#: Warm-up: the lr rises linearly over the run's first WARMUP steps (step k at (k + 1) / WARMUP of it), a
#: per-step schedule the optimizer applies (``Policy.warmup``), not a decision. Adam's first steps rest on
#: a second-moment estimate of a handful of gradients (Liu et al. 2020, "On the Variance of the Adaptive
#: Learning Rate and Beyond"), and a start a decade too high did its damage before the first decision
#: could lower anything. One decision interval long: the first decision's evidence is about the user's lr.
WARMUP = 20

#: Raise gate: a raise is dropped while the median per-layer update ratio log10(||dw|| / ||w||)
#: (``weights.update_ratio_log10``) is at or above RAISE_GATE, the 90th percentile of that ratio at the
#: train families' best constant lr: the steps are already as large as a tuned run's, and a climb on a
#: still positive cosine runs away. A missing ratio (no weights watched) reads -3 and does not gate.
RAISE_GATE = -1.6

#: The lr log-change of one unit of action (action spec v2: x3), to turn the cooldown's schedule into actions.
_LOG_STEP = float(ACTION_VERSIONS["2"]["lr_log_step"])


@dataclass(frozen=True)
class PriorConfig:
    """One configuration of the step-size rule: which parts act around its hypergradient core.

    Attributes:
        version: the name it loads under (``prior@<version>``) and its ``Policy.version``; cards,
            checkpoints and evaluations name a prior by it.
        cooldown: share of a known budget (``total_steps``), at its end, over which the lr decays
            linearly toward ``FLOOR`` of its value and raises stop; ``None``: no cooldown.
        validation_guard: whether observed validation losses drop raises past ``GUARD_GL`` above
            their best and halve the lr past ``CUT_GL``.
        warmup: steps of linear lr warm-up at the start of a run (``Policy.warmup``); ``None``: none.
        raise_gate: ``weights.update_ratio_log10`` at or above which raises are dropped; ``None``: no gate.
    """

    version: str
    cooldown: float | None
    validation_guard: bool
    warmup: int | None
    raise_gate: float | None


#: The prior under the shipped default policy (its card's ``prior``).
PRIOR_10 = PriorConfig(version="10", cooldown=COOLDOWN, validation_guard=True, warmup=WARMUP, raise_gate=None)
#: prior@10 with the raise gate: on the train and validation splits level with prior@10 in geo-mean regret,
#: with fewer runs harmed at a tuned lr (docs/design/step-size-prior.md).
PRIOR_15 = PriorConfig(version="15", cooldown=COOLDOWN, validation_guard=True, warmup=WARMUP, raise_gate=RAISE_GATE)
#: The shipped configurations by version.
CONFIGS: dict[str, PriorConfig] = {c.version: c for c in (PRIOR_10, PRIOR_15)}
#: The best prior alone: ``load_policy("prior")`` and the default prior of ``chuck train-policy``.
LATEST = "15"


class StepSizePrior(Policy):
    """The hypergradient step-size rule of the module docstring, configured by a :class:`PriorConfig`.

    Args:
        observation_version: the observation spec it reads (default: the newest).
        version: a shipped configuration (:data:`CONFIGS`), used when ``config`` is not given.
        config: the configuration to run (its ``version`` becomes this policy's).
    """

    name = "prior"

    def __init__(
        self, observation_version: str | None = None, version: str = LATEST, *, config: PriorConfig | None = None
    ) -> None:
        if config is None:
            if version not in CONFIGS:
                raise ValueError(f"unknown prior version {version!r}; shipped: {sorted(CONFIGS, key=int)}")
            config = CONFIGS[version]
        self.config = config
        self.version = config.version
        self.warmup = config.warmup
        self.spec = ObservationSpec(observation_version)
        self.observation_version = self.spec.version
        self._why: dict[str, dict[str, float]] = {}
        self.reset()

    def reset(self) -> None:
        self._level: float | None = None  # log lr change the cooldown has asked for so far (None: not started)
        self._last_progress: float | None = None

    @property
    def in_cooldown(self) -> bool:
        """Whether the last decision fell in the cooldown of a known budget."""
        return self._level is not None

    def state_dict(self) -> dict[str, Any]:
        return {"level": self._level, "last_progress": self._last_progress}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._level, self._last_progress = state.get("level"), state.get("last_progress")

    def validate_state_dict(self, state: dict[str, Any]) -> str | None:
        return check.first(
            check.optional(check.number, "level", state.get("level")),
            check.optional(check.number, "last_progress", state.get("last_progress"), low=0.0, high=1.0),
        )

    def act(self, observation: np.ndarray) -> np.ndarray:
        f = self.spec.as_dict(observation)
        lr, why = self.lr_action(f)
        lr, why = self._gate(f, lr, why)
        if self.config.validation_guard:
            lr, why = self._guard(f, lr, why)
        lr, why = self._cooldown(f, lr, why)
        return self._action(lr, why)

    def _action(self, lr: float, why: str) -> np.ndarray:
        """The action for an lr move (in action spec v2's units), remembering the reason for ``explain``."""
        self._why = {"lr": {why: float(np.sign(lr))}} if lr != 0.0 and why else {}
        return np.array([lr, 0.0, 0.0, 0.0], dtype=np.float32)

    @staticmethod
    def lr_action(f: dict[str, float], lower_at: float = LOWER_AT, raise_at: float = RAISE_AT) -> tuple[float, str]:
        """The hypergradient rule's lr action and the feature that decided it."""
        # Real instability only: the guardrails threw steps away (a 10x spike or a non-finite value), or the
        # loss climbs while the gradients grow. A single minibatch 3x above the median is routine on small
        # data with small losses; cutting on it harmed tuned runs.
        if f["ctrl.skip_rate"] > 0 or (f["loss.log_slope"] > 0.5 and f["grad.norm_trend"] > math.log(3.0)):
            return -1.0, "instability (skipped steps, or a rising loss with growing gradients)"
        h = f.get("step.hypergrad", 0.0)
        if h > raise_at:
            return float(min(1.0, BASE_STEP + GAIN * (h - raise_at))), "step.hypergrad"
        if h < lower_at:
            return float(max(-1.0, -BASE_STEP + GAIN * (h - lower_at))), "step.hypergrad"
        return 0.0, ""

    def _gate(self, f: dict[str, float], lr: float, why: str) -> tuple[float, str]:
        """The raise gate: no raise while the steps are already as large as a tuned run's."""
        gate = self.config.raise_gate
        if gate is not None and lr > 0.0 and f.get("weights.update_ratio_log10", -np.inf) >= gate:
            return 0.0, ""
        return lr, why

    @staticmethod
    def _guard(f: dict[str, float], lr: float, why: str) -> tuple[float, str]:
        """The validation guard: the validation loss overrules a raise, and halves the lr well past its best."""
        if f.get("loss.has_val", 0.0) < 0.5:
            return lr, why
        gl = f.get("loss.overfit_gl", 0.0)
        if gl > CUT_GL:
            return min(lr, -math.log(2.0) / _LOG_STEP), f"validation loss {gl:.0%} above its best"
        if gl > GUARD_GL and lr > 0.0:
            return 0.0, ""
        return lr, why

    def _enter_cooldown(self, f: dict[str, float]) -> tuple[float, float | None] | None:
        """``(progress, the previous decision's progress)`` when this decision falls in the cooldown of a known
        budget, else None. Tracks the run's progress: a progress below the last one is a new run."""
        cooldown = self.config.cooldown
        if cooldown is None or f.get("ctrl.has_total", 0.0) < 0.5:
            return None
        progress = float(f.get("ctrl.progress", 0.0))
        last, self._last_progress = self._last_progress, progress
        if last is not None and progress < last:  # a new run without reset(): start over
            self._level, last = None, None
        if progress < 1.0 - cooldown:
            return None
        if self._level is None:
            self._level = 0.0
        return progress, last

    def _cooldown(self, f: dict[str, float], lr: float, why: str) -> tuple[float, str]:
        """In the cooldown, follow the linear decay (plus any cut the rule asks for on instability, overshoot
        or the validation guard); raises are dropped."""
        entered = self._enter_cooldown(f)
        if entered is None:
            return lr, why
        progress, last = entered
        assert self.config.cooldown is not None and self._level is not None
        start = 1.0 - self.config.cooldown
        # aim at the middle of the coming interval (decisions are evenly spaced in steps)
        spacing = progress - last if last is not None else 0.0
        mid = min(1.0, progress + spacing / 2)
        target = math.log(max(FLOOR, 1.0 - (mid - start) / self.config.cooldown))
        scheduled = min(0.0, (target - self._level) / _LOG_STEP)
        cut = min(lr, 0.0)
        total = float(max(-1.0, scheduled + cut))
        self._level += (total - cut) * _LOG_STEP  # the schedule's share of what is applied (a cut may crowd it out)
        if cut < 0.0:
            return total, why
        return total, f"cooldown ({progress:.0%} of total_steps)" if total < 0.0 else ""

    def explain(self, observation: np.ndarray) -> dict[str, dict[str, float]]:
        return {d: dict(r) for d, r in self._why.items()}
