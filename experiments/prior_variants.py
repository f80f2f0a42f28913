"""The step-size prior's rejected versions: the ablation behind chuck.policies.prior, kept runnable.

Each version changes one thing in an earlier one (docs/design/step-size-prior.md has the table of what
was tried and why it was rejected; the measurements are in git history, docs/results.md at the commits
that introduced each version). The product ships versions 10 and 15 as :class:`PriorConfig`; here
:class:`VariantConfig` adds the switches of the others and :class:`PriorVariant` is the product rule
with those switches. ``experiments/lab_policies.py`` registers them as ``prior@N`` with chuck's loader.

Version 17 acts on action spec v3 (a decade per decision), which the product does not ship: importing
this module adds it to ``chuck.core.actions.ACTION_VERSIONS``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from chuck.core.actions import ACTION_VERSIONS
from chuck.policies.prior import (
    _LOG_STEP,
    BASE_STEP,
    COOLDOWN,
    CUT_GL,
    GUARD_GL,
    LOWER_AT,
    RAISE_AT,
    RAISE_GATE,
    WARMUP,
    PriorConfig,
    StepSizePrior,
)

#: Action spec v3: v2's bounds, up to a decade per decision (version 17 only).
ACTION_VERSIONS.setdefault("3", {"lr_bounds": (1e-3, 1000.0), "lr_log_step": math.log(10.0)})

#: Version 4's lower edge: the run-average cosine half a decade and a decade above the best lr (-0.025)
#: sat inside the product's hold band; per-decision cosines proved much noisier than those averages.
TIGHT_LOWER_AT = -0.01
#: Versions 5 and 6: the Prodigy-style distance bound (``step.log10_update_over_dhat``). Past DIST_HIGH
#: the mean step is ten times the distance the gradients say is left; with a cosine below HOLD_BELOW
#: (a tuned run's) the lr is lowered, and never raised while the guard fires. The observation clips the
#: ratio at NO_BOUND, which a run whose bound never turned positive reads for good (version 6 ignores it).
DIST_HIGH = 1.0
HOLD_BELOW = 0.03
NO_BOUND = 3.0
#: Version 7 decides every FAST_INTERVAL steps instead of 20.
FAST_INTERVAL = 10
#: Versions 12 and 13: the cosine at a tuned lr is high early in a run, about 0.03 + 0.15 exp(-k / 3) at
#: its k-th decision; version 12 raises the raise threshold by that excess, version 13 the lower edge
#: (less EARLY_LOWER_SLACK).
EARLY_MARGIN = 0.15
EARLY_DECAY = 3.0
EARLY_LOWER_SLACK = 0.04
#: Version 14's raise gate: the median update ratio at the best lr (the product's is its 90th percentile).
TIGHT_RAISE_GATE = -1.9
#: Version 16: no validation guard once the validation loss is below VAL_FLOOR of the starting loss
#: (read as exp(gen_gap + log_ratio_initial)), where float noise moves Prechelt's GL by whole multiples.
VAL_FLOOR = 1e-3
#: Version 17: where the cosine asks for a raise (above FAR_COSINE) and the update ratio is at or below
#: FAR_RATIO, raise by (TUNED_RATIO - ratio) / RATIO_PER_DECADE decades, at most one: the ratio's median
#: at the best lr, and its slope per decade of lr below it, on the train families.
FAR_RATIO = -2.5
FAR_COSINE = 0.2
TUNED_RATIO = -1.89
RATIO_PER_DECADE = 0.74
#: Version 19: consecutive updates with a cosine below UNSTABLE_COS (Adam keeps them near parallel at any
#: sane lr) are the edge of stability (Cohen et al. 2021): lower whatever the hypergradient says.
UNSTABLE_COS = 0.5
#: Version 20: no cosine-driven lower while the training loss is within 10% of its start
#: (``loss.log_ratio_initial`` above PLATEAU_HOLD): a run that has learned nothing yet sits on a plateau
#: (a long-range memory or parity task before its drop, a flat valley whose updates flip sign), not past
#: a valley it never reached, and a lower lr only lengthens the way off it. Instability still lowers.
PLATEAU_HOLD = math.log(0.9)
#: Version 22: version 20's hold only while the gradient norm holds steady over the window
#: (``grad.norm_cv`` below PLATEAU_SWING), and, where the rule does not raise, a residual on it with
#: ``residual_plateau_hold`` may not lower the lr either. The hope: a start too high that sits near its
#: starting loss looks like a plateau to the loss and to the update ratios (version 21), but its steps
#: overshoot, and overshooting steps make the gradient norm swing (the edge of stability: Cohen et al.
#: 2021). On the train split's plateau families under the constant policy (experiments/plateau_signals.py)
#: that CV had a 90th percentile of 0.27 (AdamW) and 0.48 (SGD) at the grid's best lr, and a median of
#: 0.41 half a decade above it and 0.78 a decade above it (SGD): it separates in the median, not run by run.
#: The evidence above the best lr is SGD's only: no AdamW start above its grid's best sat on a plateau
#: there (the parity's too-high AdamW starts memorize: their training loss falls). At the validation
#: parity's best AdamW lr the median CV was 0.46, above the threshold, where the hold does not act.
PLATEAU_SWING = 0.4


@dataclass(frozen=True)
class VariantConfig(PriorConfig):
    """A :class:`PriorConfig` with the switches of the rejected versions (each off by default).

    Attributes:
        lower_at: the hypergradient's lower edge (version 4: ``TIGHT_LOWER_AT``).
        distance_guard: ``"any"`` (version 5) or ``"finite"`` (version 6, ignoring ``NO_BOUND``): lower on
            steps far beyond the distance bound.
        interval: the decision interval the policy asks for (version 7).
        persistent_raise: raise only when the previous decision asked for a raise too (version 8).
        overfit_only_guard: the validation guard halves only while validation is above training (version 9).
        hold_first_raise: never raise at a run's first decision (version 11).
        early_margin: the raise threshold's early-run excess, times exp(-k / EARLY_DECAY) (version 12).
        early_lower: the lower edge follows the early-run baseline too (version 13).
        val_floor: no validation guard below this share of the starting loss (version 16).
        far_raise: up to a decade per decision when far too low, on action spec v3 (version 17).
        anneal: the optimizer anneals per step over the cooldown; decisions only cut there (version 18).
        stability: lower on sign-flipping updates (version 19).
        plateau_hold: no cosine-driven lower while ``loss.log_ratio_initial`` is above it (version 20).
        plateau_swing: the hold applies only while ``grad.norm_cv`` is below it, and then, where the rule does
            not raise, holds a residual's learned lowers too (``holds_plateau``, read by a residual whose card
            has ``residual_plateau_hold``; version 22).
        hold_ceiling: the hold applies only while ``ctrl.log_lr_mult`` is at or below it: not above the
            user's own lr, where a negative cosine may be chuck's own climb overshooting (version 23).
    """

    lower_at: float = LOWER_AT
    distance_guard: str | None = None
    interval: int | None = None
    persistent_raise: bool = False
    overfit_only_guard: bool = False
    hold_first_raise: bool = False
    early_margin: float = 0.0
    early_lower: bool = False
    val_floor: float | None = None
    far_raise: bool = False
    anneal: bool = False
    stability: bool = False
    plateau_hold: float | None = None
    plateau_swing: float | None = None
    hold_ceiling: float | None = None


def _variant(version: str, base: VariantConfig, **changes: Any) -> VariantConfig:
    """``base`` with ``changes``, under another version."""
    return dataclasses.replace(base, version=version, **changes)


_V1 = VariantConfig(version="1", cooldown=None, validation_guard=False, warmup=None, raise_gate=None)
_V3 = _variant("3", _V1, cooldown=COOLDOWN, validation_guard=True)
_V10 = _variant("10", _V3, warmup=WARMUP)
_V15 = _variant("15", _V10, raise_gate=RAISE_GATE)
#: Every version of the ablation, by version; 10 and 15 are the product's (chuck.policies.prior.CONFIGS),
#: here as the bases the others change.
VARIANTS: dict[str, VariantConfig] = {
    "1": _V1,
    "2": _variant("2", _V1, cooldown=COOLDOWN),
    "3": _V3,
    "4": _variant("4", _V3, lower_at=TIGHT_LOWER_AT),
    "5": _variant("5", _V3, distance_guard="any"),
    "6": _variant("6", _V3, distance_guard="finite"),
    "7": _variant("7", _V3, interval=FAST_INTERVAL),
    "8": _variant("8", _V3, persistent_raise=True),
    "9": _variant("9", _V3, overfit_only_guard=True),
    "10": _V10,
    "11": _variant("11", _V10, hold_first_raise=True),
    "12": _variant("12", _V10, early_margin=EARLY_MARGIN),
    "13": _variant("13", _V10, early_lower=True),
    "14": _variant("14", _V10, raise_gate=TIGHT_RAISE_GATE),
    "15": _V15,
    "16": _variant("16", _V10, val_floor=VAL_FLOOR),
    "17": _variant("17", _V15, far_raise=True),
    "18": _variant("18", _V15, anneal=True),
    "19": _variant("19", _V15, stability=True),
    "20": _variant("20", _V10, plateau_hold=PLATEAU_HOLD),
    "22": _variant("22", _V10, plateau_hold=PLATEAU_HOLD, plateau_swing=PLATEAU_SWING),
    "23": _variant("23", _V10, plateau_hold=PLATEAU_HOLD, plateau_swing=PLATEAU_SWING, hold_ceiling=0.0),
}
#: The versions that hold a steady plateau and tell a residual so (``holds_plateau``): the priors a
#: derived artifact with ``residual_plateau_hold`` may sit on.
HOLDING_VERSIONS = tuple(v for v, c in VARIANTS.items() if c.plateau_swing is not None)


def holds_a_plateau(prior: str | None) -> bool:
    """Whether the prior named ``prior`` (a card's ``prior``) is one of :data:`HOLDING_VERSIONS`."""
    return prior in [f"prior@{v}" for v in HOLDING_VERSIONS]


#: The versions that live only here (registered as ``prior@N`` by experiments/lab_policies.py).
LAB_VERSIONS = tuple(v for v in VARIANTS if v not in ("10", "15"))


class PriorVariant(StepSizePrior):
    """The product's step-size rule with a :class:`VariantConfig`'s switches.

    Args:
        observation_version: the observation spec it reads (default: the newest).
        version: a version of :data:`VARIANTS`, used when ``config`` is not given.
        config: the configuration to run (a plain :class:`PriorConfig` runs with every switch off).
    """

    def __init__(self, observation_version: str | None = None, version: str = "3", *, config: PriorConfig | None = None) -> None:
        if config is None:
            if version not in VARIANTS:
                raise ValueError(f"unknown prior version {version!r}; known: {sorted(VARIANTS, key=int)}")
            config = VARIANTS[version]
        if not isinstance(config, VariantConfig):
            config = VariantConfig(**dataclasses.asdict(config))
        self.variant = config
        super().__init__(observation_version, config=config)
        self.interval = config.interval
        self.anneal = config.cooldown if config.anneal else None
        self.action_version = "3" if config.far_raise else "2"
        self._to_spec = _LOG_STEP / float(ACTION_VERSIONS[self.action_version]["lr_log_step"])
        self._gap_clip = next((f.high for f in self.spec.features if f.name == "loss.gen_gap"), math.inf)

    def reset(self) -> None:
        super().reset()
        self._asked_raise = False  # the previous decision's cosine asked for a raise (version 8)
        self._decisions = 0  # decisions so far in this run (versions 11-13)
        self.holds_plateau = False  # the last decision held lowers on a steady plateau (versions 22, 23)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "asked_raise": self._asked_raise, "decided": self._decisions}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._asked_raise = bool(state.get("asked_raise", False))
        self._decisions = int(state.get("decided", 0))

    def act(self, observation: np.ndarray) -> np.ndarray:
        c = self.variant
        f = self.spec.as_dict(observation)
        early = math.exp(-self._decisions / EARLY_DECAY)
        raise_at = RAISE_AT + c.early_margin * early
        lower_at = c.lower_at + (max(0.0, EARLY_MARGIN * early - EARLY_LOWER_SLACK) if c.early_lower else 0.0)
        lr, why = self.lr_action(f, min(lower_at, raise_at), raise_at)
        hold = c.plateau_hold is not None and f.get("loss.log_ratio_initial", -np.inf) > c.plateau_hold
        if c.plateau_swing is not None:
            hold = hold and f.get("grad.norm_cv", np.inf) < c.plateau_swing
        if c.hold_ceiling is not None:
            hold = hold and f.get("ctrl.log_lr_mult", 0.0) <= c.hold_ceiling
        if hold and lr < 0.0 and why == "step.hypergrad":
            lr, why = 0.0, ""
        # read by a residual with ``residual_plateau_hold`` after this prior acts: no learned cut where the
        # rule's own reading (the cosine, or instability) is not a raise, whatever the gate, the validation
        # guard and the cooldown make of it below (a correction may still temper a raise: a start too low
        # sits near its starting loss too, climbing). This is the version that was measured; a learned cut
        # beside the prior's own cut for instability or the guard is dropped with the rest.
        self.holds_plateau = hold and c.plateau_swing is not None and lr <= 0.0
        if c.far_raise and lr > 0.0:
            lr, why = _far(f, lr, why)
        first, self._decisions = self._decisions == 0, self._decisions + 1
        lr, why = self._gate(f, lr, why)
        if c.stability and _unstable(f.get("weights.update_cosine", 0.0)):
            lr, why = min(lr, -BASE_STEP), "weights.update_cosine"
        if c.hold_first_raise and first and lr > 0.0:
            lr, why = 0.0, ""
        if c.persistent_raise:
            asked, self._asked_raise = self._asked_raise, lr > 0.0
            if lr > 0.0 and not asked:
                lr, why = 0.0, ""
        if c.distance_guard is not None:
            lr, why = self._distance(f, lr, why)
        if c.validation_guard and not self._below_val_floor(f):
            lr, why = _overfit_guard(f, lr, why) if c.overfit_only_guard else self._guard(f, lr, why)
        lr, why = self._cooldown(f, lr, why)
        return self._action(lr * self._to_spec if self._to_spec != 1.0 else lr, why)

    def _cooldown(self, f: dict[str, float], lr: float, why: str) -> tuple[float, str]:
        """Version 18: the optimizer anneals per step (``Policy.anneal``); in the cooldown only cuts pass."""
        if self.anneal is None:
            return super()._cooldown(f, lr, why)
        if self._enter_cooldown(f) is None:
            return lr, why
        return (lr, why) if lr < 0.0 else (0.0, "")

    def _distance(self, f: dict[str, float], lr: float, why: str) -> tuple[float, str]:
        """Versions 5 and 6: steps far beyond the distance bound, on a cosine that does not ask for more."""
        r = f.get("step.log10_update_over_dhat", -1.0)
        if self.variant.distance_guard == "finite" and r >= NO_BOUND:
            return lr, why
        if r <= DIST_HIGH or lr < 0.0:
            return lr, why
        if f.get("step.hypergrad", 0.0) < HOLD_BELOW:
            return -BASE_STEP, "step.log10_update_over_dhat"
        return 0.0, ""

    def _below_val_floor(self, f: dict[str, float]) -> bool:
        """Version 16: the validation loss is below ``val_floor`` of the run's starting loss."""
        floor = self.variant.val_floor
        if floor is None or f.get("loss.has_val", 0.0) < 0.5:
            return False
        gap, ratio = f.get("loss.gen_gap", math.nan), f.get("loss.log_ratio_initial", math.nan)
        if not (math.isfinite(gap) and math.isfinite(ratio)) or gap >= self._gap_clip:
            return False  # unknown, or validation far above training: overfitting, the guard's case
        return gap + ratio < math.log(floor)


def _overfit_guard(f: dict[str, float], lr: float, why: str) -> tuple[float, str]:
    """Version 9: the validation guard, halving only while the validation loss is above the training loss."""
    if f.get("loss.has_val", 0.0) < 0.5:
        return lr, why
    gl = f.get("loss.overfit_gl", 0.0)
    if gl > CUT_GL and f.get("loss.gen_gap", 0.0) > 0.0:
        return min(lr, -math.log(2.0) / _LOG_STEP), f"validation loss {gl:.0%} above its best"
    if gl > GUARD_GL and lr > 0.0:
        return 0.0, ""
    return lr, why


def _far(f: dict[str, float], lr: float, why: str) -> tuple[float, str]:
    """Version 17: a raise the cosine asks for, while the steps are far smaller than a tuned run's, goes most
    of the way to a tuned run's step size at once, in v2's units."""
    ratio = f.get("weights.update_ratio_log10", math.nan)
    if not (math.isfinite(ratio) and ratio <= FAR_RATIO and f.get("step.hypergrad", 0.0) > FAR_COSINE):
        return lr, why
    decades = min(1.0, (TUNED_RATIO - ratio) / RATIO_PER_DECADE)
    far = decades * math.log(10.0) / _LOG_STEP
    return (far, "weights.update_ratio_log10") if far > lr else (lr, why)


def _unstable(update_cosine: float) -> bool:
    """Version 19's reading: consecutive updates far from parallel. A cosine not measured yet is encoded as
    exactly 0 (its missing value), which is no evidence."""
    return update_cosine != 0.0 and update_cosine < UNSTABLE_COS
