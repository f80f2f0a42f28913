"""The controller's own state as a monitor: the ``ctrl.*`` features of the observation.

What chuck has done so far (its multipliers, whether clipping is on, how far the run is,
how many steps the guardrails threw away) is part of what a policy must see to act
sensibly, so it enters the observation the way every other statistic does.
"""

from __future__ import annotations

import math
from typing import Any

from chuck.core import statecheck as check
from chuck.core.actions import CLIP_OFF_LOG_RATIO, ActionSpec
from chuck.monitors.base import Indicator, Monitor, RunPhase, StepRecord

#: Guardrail verdicts that count as instability in ``ctrl.skip_rate``. A GradScaler overflow
#: is routine in mixed precision (the scaler probes its scale upwards and backs off on an
#: overflow, Micikevicius et al. 2018), so it is no reason to cut the learning rate.
UNSTABLE_VERDICTS = ("skip_nonfinite", "rollback_nonfinite", "rollback_spike", "skip_spike", "accept_level_shift")

#: The early phase: the first tenth of a known budget, else the first three decision intervals (the
#: gradient-noise reference is taken over those).
EARLY_FRACTION = 0.1
EARLY_DECISIONS = 3
#: The cooldown phase: the anneal of a known budget has begun, or the effective lr is at most half its peak
#: so far, lowered on purpose by a scheduler (``group["lr"]`` below the ``initial_lr`` it recorded) or by
#: the policy's decisions (the prior's cooldown over the last 30% of a known budget, the decay of
#: warmup-stable-decay schedules, Hägele et al. 2024). A guardrail's cut counts too while it lasts: it is
#: repaid over the following healthy steps.
COOLDOWN_DROP = 0.5


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
        self.peak_lr_mult = 0.0  # the largest lr multiplier (schedule factor included) a step ran under

    def median_grad_norm(self) -> float:
        """The recent median gradient norm (the reference of chuck's clip threshold)."""
        return float(self._median())

    def on_step(self, record: StepRecord) -> None:
        self.step = record.step
        if self.action_spec.step_lr_mult > self.peak_lr_mult:
            self.peak_lr_mult = self.action_spec.step_lr_mult

    def phase(self) -> RunPhase:
        """Where the run stands (see :class:`~chuck.monitors.base.RunPhase`)."""
        spec, step, total = self.action_spec, self.step, self.total_steps
        drop = 0.0
        now = spec.step_lr_mult
        if self.peak_lr_mult > 0 and now > 0:
            drop = min(0.0, math.log10(now / self.peak_lr_mult))
        scheduled = _scheduler_factor(spec)
        drop += min(0.0, math.log10(scheduled)) if scheduled > 0 else -math.inf  # a scheduler at lr 0: all the way
        annealing = spec.anneal_start is not None and step >= spec.anneal_start
        if total and step >= total:
            name = "end"
        elif annealing or drop <= math.log10(COOLDOWN_DROP):
            name = "cooldown"
        elif step < (EARLY_FRACTION * total if total else EARLY_DECISIONS * self.interval):
            name = "early"
        else:
            name = "middle"
        return RunPhase(name, step, total, drop)

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
        phase = self.phase()
        expected = {
            "early": "the first steps: the indicators below have little history yet",
            "middle": "training at its working learning rate",
            "cooldown": "the learning rate is being lowered on purpose: smaller updates and a flatter loss are expected",
            "end": "the planned steps are done: smaller updates and a flat loss are expected",
        }[phase.name]
        return [
            Indicator(
                "ctrl.phase",
                phase.step / phase.total_steps if phase.total_steps else math.nan,
                "ok",
                f"{phase.describe()}; {expected}",
                "",
                "the lr decays at the end of a run by design (Hägele et al. 2024, warmup-stable-decay); "
                "the indicators are judged against the phase",
            )
        ]

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "skips_since_decision": self.skips_since_decision,
            "amp_overflows": self.amp_overflows,
            "peak_lr_mult": self.peak_lr_mult,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.skips_since_decision = int(state["skips_since_decision"])
        self.amp_overflows = int(state.get("amp_overflows", 0))
        self.peak_lr_mult = float(state.get("peak_lr_mult", 0.0))  # absent in older checkpoints: learnt again

    def validate_state_dict(self, state: dict[str, Any]) -> str | None:
        return check.first(
            check.count("step", state.get("step")),
            check.count("skips_since_decision", state.get("skips_since_decision")),
            check.count("amp_overflows", state.get("amp_overflows", 0)),  # absent in older checkpoints
            check.number("peak_lr_mult", state.get("peak_lr_mult", 0.0), low=0.0),  # absent in older ones too
        )


def _scheduler_factor(spec: ActionSpec) -> float:
    """The user's scheduler's share of the lr: the first group's ``lr`` over the ``initial_lr`` a
    ``torch.optim.lr_scheduler`` recorded there (1 without a scheduler)."""
    groups = spec.optimizer.param_groups if spec.optimizer is not None else []
    if not groups or "initial_lr" not in groups[0]:
        return 1.0
    lr, initial = float(groups[0]["lr"]), float(groups[0]["initial_lr"])
    return lr / initial if initial > 0 else 1.0
