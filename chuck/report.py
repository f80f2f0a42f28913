"""Records chuck hands back to the user: decisions and the health report."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from chuck.monitors.base import Indicator


@dataclass
class Decision:
    """One decision (or guardrail intervention).

    Attributes:
        step: optimizer step at which it was taken.
        source: ``"policy"``, ``"external"`` (action supplied from outside, e.g. the meta-env),
            ``"fallback"`` (the policy failed or was out of distribution; chuck held or used the
            heuristic) or ``"guardrail"`` (skip / rollback backoff).
        action: the action applied, after clipping to ``[-1, 1]`` (empty for guardrails).
        observation: the named observation the action was computed from.
        hyperparameters: effective lr, weight decay, clip, dropout (and knobs) afterwards.
        reason: why, in words (fallback cause, guardrail verdict, or the policy's top features).
        attribution: feature -> weight of its influence on the action, when the policy can tell.
        policy_id: ``name@version`` of the policy.
    """

    step: int
    source: str
    action: list[float]
    observation: dict[str, float]
    hyperparameters: dict[str, float]
    reason: str = ""
    attribution: dict[str, float] = field(default_factory=dict)
    policy_id: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Decision:
        return cls(**d)


@dataclass
class HealthReport:
    """What ``ChuckOptimizer.health()`` returns: indicators plus architecture advice."""

    step: int
    indicators: list[Indicator]
    recommendations: list[str]
    hyperparameters: dict[str, float]

    def __getitem__(self, name: str) -> Indicator:
        for ind in self.indicators:
            if ind.name == name:
                return ind
        raise KeyError(f"no indicator named {name!r}; have {[i.name for i in self.indicators]}")

    def by_status(self, *statuses: str) -> list[Indicator]:
        return [i for i in self.indicators if i.status in statuses]

    def as_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "indicators": [i.as_dict() for i in self.indicators],
            "recommendations": list(self.recommendations),
            "hyperparameters": dict(self.hyperparameters),
        }

    def __str__(self) -> str:
        marks = {"ok": "ok  ", "warn": "WARN", "bad": "BAD ", "n/a": "--  "}
        hp = self.hyperparameters
        lines = [
            f"chuck health at step {self.step}: lr={hp.get('lr', math.nan):.3g} "
            f"wd={hp.get('weight_decay', math.nan):.3g} clip={hp.get('clip', math.nan):.3g} "
            f"dropout={hp.get('dropout', 0.0):.2f}"
        ]
        width = max((len(i.name) for i in self.indicators), default=10)
        for i in self.indicators:
            line = f"  [{marks.get(i.status, i.status)}] {i.name:<{width}}  {i.reason}"
            if i.recommendation:
                line += f"  -> {i.recommendation}"
            lines.append(line)
        if self.recommendations:
            lines.append("  architecture:")
            lines.extend(f"    - {r}" for r in self.recommendations)
        return "\n".join(lines)
