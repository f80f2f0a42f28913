"""The controller's own state as a monitor: the ``ctrl.*`` features of the observation.

What chuck has done so far (its multipliers, whether clipping is on, how far the run is,
how many steps the guardrails threw away) is part of what a policy must see to act
sensibly, so it enters the observation the way every other statistic does.
"""

from __future__ import annotations

import math
from typing import Any

from chuck.core.actions import CLIP_OFF_LOG_RATIO, ActionSpec
from chuck.monitors.base import Indicator, Monitor, StepRecord

#: Guardrail verdicts that count as instability in ``ctrl.skip_rate``. A GradScaler overflow
#: is routine in mixed precision (the scaler probes its scale upwards and backs off on an
#: overflow, Micikevicius et al. 2018), so it is no reason to cut the learning rate.
UNSTABLE_VERDICTS = ("skip_nonfinite", "rollback_nonfinite", "rollback_spike", "skip_spike", "accept_level_shift")


class ControlMonitor(Monitor):
    """Reports chuck's control state.

    Args:
        action_spec: the run's action spec (multipliers, clip, dropout).
        interval: steps per decision (the skip rate's denominator).
        total_steps: planned steps, when known (for ``ctrl.progress``).
        median_grad_norm: callable giving the recent median gradient norm (clip ratio reference).
    """

    name = "ctrl"

    def __init__(self, action_spec: ActionSpec, interval: int, total_steps: int | None, median_grad_norm: Any) -> None:
        self.action_spec = action_spec
        self.interval = interval
        self.total_steps = total_steps
        self._median = median_grad_norm
        self.step = 0
        self.skips_since_decision = 0
        self.amp_overflows = 0

    def median_grad_norm(self) -> float:
        """The recent median gradient norm (the reference of chuck's clip threshold)."""
        return float(self._median())

    def on_step(self, record: StepRecord) -> None:
        self.step = record.step

    def on_guardrail(self, verdict: str) -> None:
        if verdict in UNSTABLE_VERDICTS:
            self.skips_since_decision += 1
        elif verdict == "amp_overflow":
            self.amp_overflows += 1

    def decision_made(self) -> None:
        """The skip rate counts from one decision to the next."""
        self.skips_since_decision = 0

    def stats(self) -> dict[str, float]:
        spec = self.action_spec
        hp = spec.hyperparameters()
        median = self.median_grad_norm()
        if math.isinf(spec.clip):
            clip_ratio = CLIP_OFF_LOG_RATIO
        elif median > 0 and math.isfinite(median):
            clip_ratio = math.log(spec.clip / median)
        else:
            clip_ratio = math.nan
        return {
            "ctrl.log10_lr": math.log10(hp["lr"]) if hp["lr"] > 0 else math.nan,
            "ctrl.log_lr_mult": math.log(spec.lr_mult),
            "ctrl.log_wd_mult": math.log(spec.wd_mult),
            "ctrl.clip_on": 0.0 if math.isinf(spec.clip) else 1.0,
            "ctrl.log_clip_ratio": clip_ratio,
            "ctrl.dropout": hp["dropout"],
            "ctrl.has_dropout": 1.0 if spec.dropouts else 0.0,
            "ctrl.progress": min(1.0, self.step / self.total_steps) if self.total_steps else math.nan,
            "ctrl.has_total": 1.0 if self.total_steps else 0.0,
            "ctrl.skip_rate": min(1.0, self.skips_since_decision / self.interval),
        }

    def indicators(self) -> list[Indicator]:
        return []

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "skips_since_decision": self.skips_since_decision, "amp_overflows": self.amp_overflows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.skips_since_decision = int(state["skips_since_decision"])
        self.amp_overflows = int(state.get("amp_overflows", 0))

    def validate_state_dict(self, state: dict[str, Any]) -> str | None:
        for key in ("step", "skips_since_decision"):
            v = state.get(key)
            if not isinstance(v, int) or v < 0:
                return f"{key} must be a non-negative integer, got {v!r}"
        return None
