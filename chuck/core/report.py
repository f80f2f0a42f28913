"""Records chuck hands back to the user: decisions and the health report."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, overload

from chuck.monitors.base import Indicator

#: Sources of a decision record.
SOURCES = ("policy", "external", "fallback", "guardrail")


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
        attribution: per action dimension (``"lr"``, ``"weight_decay"``, ``"clip"``, ``"dropout"``),
            feature -> signed weight of its push on that dimension (positive: towards raising it).
            Filled for learned policies (gradient x input), and for the heuristic and fallbacks
            from their rules.
        policy_id: ``name@version`` of the policy.
    """

    step: int
    source: str
    action: list[float]
    observation: dict[str, float]
    hyperparameters: dict[str, float]
    reason: str = ""
    attribution: dict[str, dict[str, float]] = field(default_factory=dict)
    policy_id: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Decision:
        return cls(**d)

    def top_features(self, dim: str = "lr", k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` features that pushed ``dim`` hardest, with their signed weights."""
        return sorted(self.attribution.get(dim, {}).items(), key=lambda kv: -abs(kv[1]))[:k]

    def __str__(self) -> str:
        """``step 120 [policy] lr x3: update ratio 10^-4.6, below its usual 10^-3 (+0.41) -> lr 3e-05, wd 0.01, clipping off``."""
        return f"step {self.step} [{self.source}] {self.reason or 'hold'} -> {_hp_text(self.hyperparameters)}"

    def __repr__(self) -> str:
        """Readable: the step, source, resulting hyperparameters and the reason (the observation is in ``.observation``)."""
        return f"Decision(step={self.step}, source={self.source!r}, {_hp_text(self.hyperparameters)}, reason={self.reason!r})"


def _hp_text(hp: dict[str, float]) -> str:
    clip = hp.get("clip", math.nan)
    text = f"lr {hp.get('lr', math.nan):.3g}, wd {hp.get('weight_decay', math.nan):.3g}, " + (
        "clipping off" if math.isinf(clip) else f"clip {clip:.3g}"
    )
    if hp.get("dropout"):
        text += f", dropout {hp['dropout']:.2f}"
    return text


class DecisionLog(Sequence[Decision]):
    """The decisions of a run, most recent last, bounded to ``maxlen`` (``None``: unbounded).

    Indexes and slices like a list (``log[-1]``, ``log[:2]``); the oldest decisions are dropped
    once ``maxlen`` is reached, so a run of a million steps keeps bounded memory.
    """

    def __init__(self, items: Iterable[Decision] = (), maxlen: int | None = None) -> None:
        self._items: deque[Decision] = deque(items, maxlen=maxlen)

    @property
    def maxlen(self) -> int | None:
        return self._items.maxlen

    def append(self, d: Decision) -> None:
        self._items.append(d)

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, i: int) -> Decision: ...
    @overload
    def __getitem__(self, i: slice) -> list[Decision]: ...

    def __getitem__(self, i: int | slice) -> Decision | list[Decision]:
        if isinstance(i, slice):
            return list(self._items)[i]
        return self._items[i]

    def __iter__(self) -> Iterator[Decision]:
        return iter(self._items)

    def __repr__(self) -> str:
        return f"DecisionLog({len(self)} decisions, maxlen={self.maxlen})"


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
        clip = hp.get("clip", math.nan)
        lines = [
            f"chuck health at step {self.step}: lr={hp.get('lr', math.nan):.3g} "
            f"wd={hp.get('weight_decay', math.nan):.3g} clip={'off' if math.isinf(clip) else format(clip, '.3g')} "
            f"dropout={hp.get('dropout', 0.0):.2f}",
            "  (ok: nothing to do; WARN: look at it; BAD: act now; --: not measurable yet)",
        ]
        width = max((len(i.name) for i in self.indicators), default=10)
        for i in self.indicators:
            line = f"  [{marks.get(i.status, i.status)}] {i.name:<{width}}  {i.reason}"
            if i.recommendation and i.status in ("warn", "bad"):  # ok and n/a ask for nothing
                line += f"  -> {i.recommendation}"
            lines.append(line)
        if self.recommendations:
            lines.append("  architecture:")
            lines.extend(f"    - {r}" for r in self.recommendations)
        return "\n".join(lines)
