"""One learning-rate direction per health report.

Several indicators advise on the learning rate, each from its own evidence, and they can disagree:
steps that are small next to the distance estimate say "raise it" while gradients that turn against
the last step say "lower it". A report that asks for both is no help, so when the indicators that
ask for action (warn or bad) disagree on the lr's direction, the one with the stronger evidence
keeps its advice and the others are demoted to ``warn`` with "conflicting signals" and no lr advice
of their own. Evidence ranks, strongest first (:data:`PRECEDENCE`):

0. **the run is breaking**: non-finite weights, exploding gradients, loss spikes. An unstable run
   must slow down whatever its step sizes look like (Pascanu et al. 2013; PaLM, Chowdhery et al. 2022).
1. **the loss itself**: a training loss that climbs or oscillates without progress is the objective
   saying the steps are too large.
2. **the loss's response to the last steps**: the hypergradient (Baydin et al. 2018) measures the
   derivative of the loss along the lr directly, and sign-flipping updates (Cohen et al. 2021) show
   the edge of stability.
3. **step-size scales**: the update-to-weight ratio and the Prodigy-style distance estimate are
   rules about typical sizes (CS231n; Defazio & Mishchenko 2023, a bound for convex losses): weaker
   than a measured response of the loss.
4. **indirect signs**: gradient noise (a batch-size question first), dead or saturated units (an
   initialization or architecture question first), and indicators of users' own monitors.

Within a rank a ``bad`` outweighs a ``warn``. When the strongest evidence itself disagrees (same
rank, same status, both ways), no indicator keeps its lr advice: each says "no lr change advised:
signals disagree".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from chuck.monitors.base import Indicator

#: Indicator name -> rank of its evidence on the lr's direction (0: strongest); see the module docstring.
PRECEDENCE: dict[str, int] = {
    "weights.nonfinite": 0,
    "grad.exploding": 0,
    "loss.spike": 0,
    "loss.convergence": 1,
    "loss.oscillation": 1,
    "step.hypergradient": 2,
    "weights.update_direction": 2,
    "weights.update_ratio": 3,
    "step.size_vs_distance": 3,
    "grad.noise": 4,
    "act.dead_relu": 4,
    "act.saturation": 4,
}
#: The rank of indicators not listed (users' monitors).
DEFAULT_RANK = 4

_SEVERITY = {"bad": 0, "warn": 1}


def strength(ind: Indicator) -> tuple[int, int]:
    """How strong ``ind``'s evidence on the lr is: (rank, severity), smaller is stronger."""
    return PRECEDENCE.get(ind.name, DEFAULT_RANK), _SEVERITY.get(ind.status, 2)


def resolve_lr_conflicts(indicators: Sequence[Indicator]) -> list[Indicator]:
    """``indicators`` with at most one learning-rate direction left among them (see the module docstring)."""
    advising = [i for i in indicators if i.lr_advice and i.status in ("warn", "bad")]
    if len({i.lr_advice for i in advising}) < 2:
        return list(indicators)
    best = min(strength(i) for i in advising)
    winners = [i for i in advising if strength(i) == best]
    ways = {i.lr_advice for i in winners}
    out = []
    for ind in indicators:
        if ind not in advising:
            out.append(ind)
        elif len(ways) > 1:
            others = ", ".join(f"{w.name} says {w.lr_advice}" for w in advising if w is not ind)
            out.append(_demote(ind, f"signals disagree ({others})", "no lr change advised: signals disagree"))
        elif ind.lr_advice in ways:
            out.append(ind)
        else:
            way = next(iter(ways))
            names = ", ".join(w.name for w in winners)
            out.append(
                _demote(
                    ind,
                    f"conflicting signals: {names} (stronger evidence) says {way} the learning rate",
                    f"conflicting signals: follow {names}, not this indicator, on the learning rate",
                )
            )
    return out


def _demote(ind: Indicator, why: str, recommendation: str) -> Indicator:
    return dataclasses.replace(ind, status="warn", reason=f"{ind.reason}; {why}", recommendation=recommendation, lr_advice="")


def lr_direction(indicators: Sequence[Indicator]) -> str:
    """The one lr direction the indicators advise (``"raise"``, ``"lower"``), or ``""`` for none."""
    ways = {i.lr_advice for i in indicators if i.lr_advice and i.status in ("warn", "bad")}
    return next(iter(ways)) if len(ways) == 1 else ""
