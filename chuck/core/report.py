"""Records chuck hands back to the user: decisions and the health report."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, overload

from chuck.monitors.base import Indicator
from chuck.monitors.lr_advice import lr_direction

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
        changed: hyperparameter -> ``(before, after)`` for every one this decision moved (effective
            ``"lr"``, ``"weight_decay"``, ``"clip"`` (``inf``: off), ``"dropout"``, ``"knob.<name>"``);
            empty when it held. The same values as the ``hyperparameters`` after it and before it.
    """

    step: int
    source: str
    action: list[float]
    observation: dict[str, float]
    hyperparameters: dict[str, float]
    reason: str = ""
    attribution: dict[str, dict[str, float]] = field(default_factory=dict)
    policy_id: str = ""
    changed: dict[str, tuple[float, float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The record as plain dicts, lists and tuples (what ``dataclasses.asdict`` gives, without its deep
        copy of every number: a checkpoint converts up to a thousand records, each of a few hundred numbers)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Decision:
        """The decision ``as_dict`` gave, also from records written before ``changed`` existed (it reads
        as empty) and from JSON (its pairs as lists)."""
        d = dict(d)
        d["changed"] = {str(k): (float(b), float(a)) for k, (b, a) in (d.get("changed") or {}).items()}
        return cls(**d)

    def top_features(self, dim: str = "lr", k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` features that pushed ``dim`` hardest, with their signed weights."""
        return sorted(self.attribution.get(dim, {}).items(), key=lambda kv: -abs(kv[1]))[:k]

    def __str__(self) -> str:
        """``step 120 [policy] lr x3: update ratio 2.5e-5, below its usual 1e-4 to 1e-1 (+0.41) -> lr 3e-05, wd 0.01, clipping off``."""
        return f"step {self.step} [{self.source}] {self.reason or 'hold'} -> {_hp_text(self.hyperparameters)}"

    def __repr__(self) -> str:
        """Readable: the step, source, resulting hyperparameters and the reason (the observation is in ``.observation``)."""
        return f"Decision(step={self.step}, source={self.source!r}, {_hp_text(self.hyperparameters)}, reason={self.reason!r})"


def changes(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, tuple[float, float]]:
    """``{name: (before, after)}`` for every hyperparameter whose value differs (exactly: the words of a
    decision call a move under 1% "held", the data keeps it). The multipliers behind the effective
    values (``lr_mult``, ``wd_mult``) are left out; values not measured (``nan``) never count."""
    out: dict[str, tuple[float, float]] = {}
    for name, a in after.items():
        b = before.get(name, math.nan)
        if name in ("lr_mult", "wd_mult") or math.isnan(a) or math.isnan(b) or a == b:
            continue
        out[name] = (float(b), float(a))
    return out


def _plain(value: Any) -> Any:
    """``value`` with its dicts, lists and tuples copied (their immutable contents shared)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


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
    """What ``ChuckOptimizer.health()`` returns: indicators plus architecture advice.

    The indicators are judged against the run's phase (``ctrl.phase``: small updates and a flat loss
    are expected while the lr is lowered on purpose) and advise at most one direction for the
    learning rate (:attr:`lr_advice`; indicators that disagree with stronger evidence say so).
    """

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

    @property
    def lr_advice(self) -> str:
        """The way the indicators advise moving the learning rate: ``"raise"``, ``"lower"`` or ``""`` (none)."""
        return lr_direction(self.indicators)

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
        way = self.lr_advice
        if way:
            why = ", ".join(i.name for i in self.indicators if i.lr_advice == way and i.status in ("warn", "bad"))
            lines.append(f"  learning rate: {way} it ({why})")
        elif any("signals disagree" in i.recommendation for i in self.indicators):
            lines.append("  learning rate: no change advised, the indicators disagree")
        if self.recommendations:
            lines.append("  architecture:")
            lines.extend(f"    - {r}" for r in self.recommendations)
        return "\n".join(lines)
