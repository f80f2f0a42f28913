"""Decisions in words a person can follow: what changed, and which measurements pushed it.

The mechanism is the controller's: every decision carries a per-dimension, signed
attribution (``Decision.attribution``: ``{dimension: {feature or rule: weight}}``, from
``Policy.explain``: gradient x input for learned policies, the rule that fired for the
heuristic and the prior). This module only puts it into words, on top of the observation
the decision was made from::

    lr x2: update ratio 2.5e-5, below its usual 1e-4 to 1e-1 (+0.41); loss falling 3% per 100 steps (+0.22)

* **what changed** comes from the hyperparameters before and after the decision (``lr x2``,
  ``clipping on at 1.2x the median gradient norm``, ``dropout 0.1 -> 0.15``);
* **why** lists the features that pushed that dimension hardest, each with its value in
  its own unit, where it stands against its usual range, and the sign and share of its push
  (``+``: towards raising the hyperparameter). The usual ranges are the monitors' own
  thresholds (each cited where the monitor defines it); for features without one, the range
  the policy saw in training (its card's ``observation_stats``) when known.
* **only measurements** are named as reasons: facts about the run's set-up (the model has dropout,
  the run length is known: :data:`RUN_FACTS`) and features that have not changed over the run so
  far are left out of the words, since they cannot say why *this* decision differs from the last.
  The attribution itself is kept whole in ``Decision.attribution``.
* **numbers read in their units**: counts as integers (``120 steps without a 1% improvement``),
  powers of ten in plain scientific notation (``2.5e-5``), and values at the floor of what a
  float32 run can hold as "about zero".

The same words reach ``Decision.reason`` (hence ``print(decision)`` and ``opt.decisions``),
the demo's summary, and the MLflow decision table, timeline and run description.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chuck.monitors.base import sci

#: Hyperparameter changes smaller than this (relative) read as "held".
HOLD_TOLERANCE = 0.01

#: Features that state a fact about the run's set-up, fixed for the run or flipped once (the model has
#: dropout, the run length is known, activations are sampled, a validation loss was observed) or
#: chuck's own switch (clipping on): a policy may weigh them, but they are never the reason a decision
#: was taken now, so the words leave them out (``Decision.attribution`` keeps their weights).
RUN_FACTS = frozenset({"ctrl.has_dropout", "ctrl.has_total", "act.has_data", "loss.has_val", "ctrl.clip_on"})

#: log10 values at or below which a magnitude reads "about zero". Update ratios: an update below
#: float32's relative resolution (2^-23, about 1.2e-7) of the weight it moves is rounded away, so a
#: median ratio under 1e-8 means the weights do not move. Gradient magnitudes: the sampled histogram
#: clamps |g| at 1e-16 (``chuck.monitors.gradients.HIST_LOW``), so its lowest decade holds the zeros.
ABOUT_ZERO_LOG10 = {"weights.update_ratio_log10": -8.0, "grad.log10_abs_median": -15.0}


def _pct(x: float) -> str:
    return f"{x:.0%}"


def _times(x: float) -> str:
    return f"x{x:.3g}" if x < 10 else f"x{x:.0f}"


def _sci(v: float, floor: float = -math.inf) -> str:
    """``10**v`` in plain notation, two significant digits (``2.5e-5``, ``0.003``); ``about zero`` at or
    below ``floor``."""
    return "about zero" if v <= floor else sci(v)


def _trend(v: float) -> str:
    # v: slope of log(loss) per 100 steps
    if abs(v) < 0.01:
        return "loss flat"
    change = math.expm1(v)
    return f"loss {'falling' if v < 0 else 'rising'} {abs(change):.0%} per 100 steps"


def _val_trend(v: float) -> str:
    if abs(v) < 0.005:
        return "validation loss flat"
    return f"validation loss {'falling' if v < 0 else 'rising'} {abs(math.expm1(v)):.1%} per evaluation"


def _clip_ratio(v: float) -> str:
    return "clipping off" if v >= 5.0 else f"clip threshold {math.exp(v):.2g}x the median gradient norm"


def _hypergrad(v: float) -> str:
    return f"new gradients point {'along' if v >= 0 else 'against'} the last step (cosine {v:+.2f})"


def _flag(on: str, off: str) -> Callable[[float], str]:
    return lambda v: on if v >= 0.5 else off


@dataclass(frozen=True)
class Wording:
    """How one observation feature reads in words.

    Attributes:
        text: the value in its own unit, as a phrase (``"update ratio 2.5e-5"``).
        usual: the range of healthy values (``None``: no fixed one), in the feature's unit.
        usual_text: that range in words: a level or range (``"1e-4 to 1e-1"``, read "below its usual 1e-4 to 1e-1") or,
            starting with a word, a range (``"under x3"``, read "(usually under x3)").
    """

    text: Callable[[float], str]
    usual: tuple[float, float] | None = None
    usual_text: str = ""
    unit: Callable[[float], str] | None = None  # a bare value in the feature's unit, for ranges from training

    def place(self, text: str, value: float, usual: tuple[float, float] | None, usual_text: str) -> str:
        """``text`` with where ``value`` stands against ``usual`` (nothing when inside it)."""
        if usual is None or usual[0] <= value <= usual[1]:
            return text
        if usual_text[:1].isalpha():
            return f"{text} (usually {usual_text})"
        return f"{text}, {'below' if value < usual[0] else 'above'} its usual {usual_text}"


_W = Wording
#: Every observation feature, in words. Usual ranges are the monitors' warn lines
#: (sources cited in chuck/monitors/*.py) or the prior's hold band (chuck/policies/prior.py).
FEATURE_WORDS: dict[str, Wording] = {
    "loss.log_slope": _W(_trend),
    "loss.noise": _W(lambda v: f"minibatch loss swings about {math.expm1(v):.0%}", unit=lambda v: f"{math.expm1(v):.0%}"),
    "loss.noise_to_progress": _W(lambda v: f"noise {_pct(v)} of noise+progress", (0.0, 0.8), "under 80%"),
    "loss.spike": _W(lambda v: f"latest loss {_times(math.exp(v))} its recent median", (-math.inf, math.log(3.0)), "under x3"),
    "loss.plateau": _W(lambda v: f"{v:.2g} loss windows without a 1% improvement", (0.0, 0.5), "under half the loss window"),
    "loss.log_ratio_initial": _W(lambda v: f"loss at {math.exp(v):.3g}x its initial value", unit=lambda v: f"{math.exp(v):.3g}x"),
    "loss.has_val": _W(_flag("a validation loss observed", "no validation loss yet")),
    "loss.gen_gap": _W(lambda v: f"validation loss {math.exp(v):.2f}x the training loss", (-math.inf, math.log(2.0)), "under 2x"),
    "loss.val_trend": _W(_val_trend),
    "loss.overfit_gl": _W(lambda v: f"validation loss {v:.1%} above its best", (0.0, 0.02), "within 2% (Prechelt's GL2)"),
    "grad.norm_log_ratio_initial": _W(
        lambda v: f"gradient norm {_times(math.exp(v))} its early median", (-math.inf, math.log(10.0)), "under x10"
    ),
    "grad.norm_trend": _W(lambda v: f"gradient norm {_times(math.exp(v))} over the window", unit=lambda v: _times(math.exp(v))),
    "grad.norm_cv": _W(lambda v: f"gradient norm varies {_pct(v)} around its mean", unit=_pct),
    "grad.clip_fraction": _W(lambda v: f"{_pct(v)} of recent steps clipped", unit=_pct),
    "grad.layer_spread_log10": _W(lambda v: f"per-layer gradient RMS spans {-v:.1f} decades", (-2.0, 0.0), "within 2 decades"),
    "grad.rms_floor_fraction": _W(lambda v: f"{_pct(v)} of tensors with gradient RMS below 1e-10", (0.0, 0.0), "none"),
    # no usual range: Adam's second moment remembers the run's larger early gradients, so the share
    # falls in every run that converges (the health report judges noise by the noise scale instead)
    "grad.snr": _W(lambda v: f"gradient signal share {_pct(v)}", unit=_pct),
    "grad.log10_abs_median": _W(lambda v: f"median |gradient| {_sci(v, ABOUT_ZERO_LOG10['grad.log10_abs_median'])}", unit=_sci),
    "grad.eps_sgd_fraction": _W(lambda v: f"{_pct(v)} of |gradient| entries below the optimizer's eps", unit=_pct),
    "act.has_data": _W(_flag("activations sampled", "no activations sampled")),
    "act.dead_fraction": _W(lambda v: f"{_pct(v)} of ReLU units dead", (0.0, 0.1), "under 10%"),
    "act.saturation": _W(lambda v: f"{_pct(v)} of tanh/sigmoid outputs saturated", (0.0, 0.1), "under 10%"),
    "act.sparsity": _W(lambda v: f"{_pct(v)} of activations zero", unit=_pct),
    "act.drift": _W(
        lambda v: f"activation scale moved {_times(math.exp(v))} from its start", (0.0, math.log(10.0)), "within x10"
    ),
    "weights.update_ratio_log10": _W(
        lambda v: f"update ratio {_sci(v, ABOUT_ZERO_LOG10['weights.update_ratio_log10'])}", (-4.0, -1.0), "1e-4 to 1e-1"
    ),
    "weights.update_cosine": _W(lambda v: f"consecutive updates at cosine {v:+.2f}", (-0.5, 1.0), "above -0.5"),
    "weights.scale_log_ratio": _W(
        lambda v: f"weights {_times(math.exp(v))} their init scale", (-math.log(10.0), math.log(10.0)), "within x10 of it"
    ),
    "ctrl.log10_lr": _W(lambda v: f"lr {10.0**v:.2g}", unit=lambda v: f"{10.0**v:.2g}"),
    "ctrl.log_lr_mult": _W(lambda v: f"chuck's lr multiplier {_times(math.exp(v))}", unit=lambda v: _times(math.exp(v))),
    "ctrl.log_wd_mult": _W(
        lambda v: f"chuck's weight-decay multiplier {_times(math.exp(v))}", unit=lambda v: _times(math.exp(v))
    ),
    "ctrl.clip_on": _W(_flag("clipping on", "clipping off")),
    "ctrl.log_clip_ratio": _W(_clip_ratio),
    "ctrl.dropout": _W(lambda v: f"dropout {v:.2f}", unit=lambda v: f"{v:.2f}"),
    "ctrl.has_dropout": _W(_flag("the model has dropout", "the model has no dropout")),
    "ctrl.progress": _W(lambda v: f"{_pct(v)} through the run", unit=_pct),
    "ctrl.has_total": _W(_flag("run length known", "run length unknown")),
    "ctrl.skip_rate": _W(lambda v: f"{_pct(v)} of steps thrown away by the guardrails", (0.0, 0.0), "none"),
    "step.log10_update_over_dhat": _W(
        lambda v: f"steps {_sci(v)} of the distance estimate", (-3.0, 0.5), "1e-3 to 3 (Prodigy's steps: about 0.1)"
    ),
    "step.hypergrad": _W(_hypergrad, (-0.05, 0.12), "between -0.05 and +0.12 at a tuned lr"),
    "step.dhat_growth": _W(
        lambda v: f"distance estimate grew {10.0**v:.3g}x since the last decision", unit=lambda v: f"{10.0**v:.3g}x"
    ),
}

#: Action dimensions in words (the names of ``chuck.core.actions.ACTION_DIMS``).
DIM_WORDS = {"lr": "lr", "weight_decay": "weight decay", "clip": "clipping", "dropout": "dropout"}


def describe_feature(
    name: str, value: float, usual: tuple[float, float] | None = None, *, steps_per_window: int | None = None
) -> str:
    """``"update ratio 2.5e-5, below its usual 1e-4 to 1e-1"``: a feature's value and where it stands.

    ``usual`` overrides the built-in range (e.g. the range the policy saw in training).
    ``steps_per_window``: the loss monitor's window, to count ``loss.plateau`` in steps.
    Unknown features read as ``name = value``.
    """
    w = FEATURE_WORDS.get(name)
    if value is None or not math.isfinite(value):
        return f"{name} not measured"
    if name == "loss.plateau" and steps_per_window:
        steps = round(value * steps_per_window)
        text = f"{steps} step{'' if steps == 1 else 's'} without a 1% improvement"
        return text if value < 0.5 else f"{text} (usually under {steps_per_window // 2})"
    if usual is not None and not usual[0] < usual[1]:
        usual = None  # a flag, or a feature that never varied in training: no range to speak of
    if w is None:
        return Wording(lambda v: f"{name} = {v:.3g}").place(
            f"{name} = {value:.3g}", value, usual, f"{usual[0]:.3g}..{usual[1]:.3g} in training" if usual else ""
        )
    try:
        text = w.text(value)
    except (OverflowError, ValueError):
        text = f"{name} = {value:.3g}"
    if w.usual is not None:
        return w.place(text, value, w.usual, w.usual_text)
    unit = w.unit or (lambda v: f"{v:.3g}")
    return w.place(text, value, usual, f"{unit(usual[0])}..{unit(usual[1])} in training" if usual else "")


def _feature_of(key: str) -> tuple[str, str]:
    """(feature name or free-text rule, who said it) for an attribution key."""
    if key.startswith("prior: "):
        return key[len("prior: ") :], "prior"
    return key, ""


def describe_push(
    key: str,
    weight: float,
    observation: Mapping[str, float],
    training_ranges: Mapping[str, tuple[float, float]] | None = None,
    rule: bool = False,
    *,
    steps_per_window: int | None = None,
) -> str:
    """One attribution entry in words: the feature's value and range, then the sign of its push."""
    name, who = _feature_of(key)
    if name in observation:
        text = describe_feature(name, observation[name], (training_ranges or {}).get(name), steps_per_window=steps_per_window)
    else:
        text = name  # a rule's own words ("instability (loss spike, ...)")
    if who:
        return f"{text} ({who} rule)"
    if rule:
        return text
    return f"{text} ({weight:+.2f})"


def what_changed(dim: str, before: Mapping[str, float], after: Mapping[str, float]) -> str | None:
    """``"lr x2"`` (or ``None`` when ``dim`` did not move): the change of one hyperparameter."""
    key = dim
    b, a = before.get(key, math.nan), after.get(key, math.nan)
    if dim == "clip":
        if math.isnan(a) or math.isinf(b) and math.isinf(a) or b == a:  # nan: not recorded, not a change
            return None
        if math.isinf(a):
            return "clipping off"
        if math.isinf(b) or math.isnan(b):
            return f"clipping on at {a:.3g}"
        return f"clip {'loosened' if a > b else 'tightened'} {_times(a / b) if a > b else '/' + format(b / a, '.3g')} to {a:.3g}"
    if dim == "dropout":
        # the same relative tolerance as the lr's: a learned policy nudges dropout by fractions of a
        # percent, which read as "dropout 0.03 -> 0.03" at two decimals
        if not (math.isfinite(a) and math.isfinite(b)) or abs(a - b) < HOLD_TOLERANCE * max(a, b, 1e-9):
            return None
        return f"dropout {b:.3g} -> {a:.3g}"
    if not (math.isfinite(a) and math.isfinite(b)) or b <= 0 or abs(a / b - 1.0) < HOLD_TOLERANCE:
        return None
    name = "wd" if dim == "weight_decay" else dim
    r = a / b
    return f"{name} x{r:.3g}" if r >= 1 else f"{name} /{1.0 / r:.3g}"


def _went_up(dim: str, before: Mapping[str, float], after: Mapping[str, float]) -> bool:
    b, a = before.get(dim, math.nan), after.get(dim, math.nan)
    if dim == "clip":  # loosening (towards off) is "up"
        return math.isinf(a) or (not math.isinf(b) and a > b)
    return a > b


def is_reason(key: str, constant: Collection[str] = ()) -> bool:
    """Whether an attribution entry may be named as a reason: a measurement (or a rule's own words), not
    a fact of the run's set-up (:data:`RUN_FACTS`) nor a feature in ``constant`` (unchanged over the run)."""
    name, _ = _feature_of(key)
    return name not in RUN_FACTS and name not in constant


def _is_rule(weights: Mapping[str, float]) -> bool:
    # the heuristic and the prior say which rule fired, weighted +-1; a learned attribution is a share of 1
    return bool(weights) and all(abs(abs(w) - 1.0) < 1e-9 for w in weights.values())


def explain_action(
    dims: Sequence[str],
    before: Mapping[str, float],
    after: Mapping[str, float],
    attribution: Mapping[str, Mapping[str, float]],
    observation: Mapping[str, float],
    *,
    training_ranges: Mapping[str, tuple[float, float]] | None = None,
    k: int = 2,
    constant: Collection[str] = (),
    steps_per_window: int | None = None,
) -> str:
    """Each dimension that moved, with the ``k`` measurements that pushed it hardest, in words.

    ``"lr x2: update ratio 2.5e-5, below its usual 1e-4 to 1e-1 (+0.41); loss falling 3% per 100 steps (+0.22)"``.
    Dimensions are separated by ``". "``, the features of one by ``"; "``. A dimension the action asked to
    move that did not (at a bound, no dropout to change) is left out. Facts of the run's set-up and the
    features in ``constant`` (unchanged over the run so far) are never named (:func:`is_reason`).
    """
    parts = []
    for d in dims:
        changed = what_changed(d, before, after)
        if changed is None:
            continue
        weights = dict(attribution.get(d, {}))
        rule = _is_rule(weights)
        up = _went_up(d, before, after)
        by_size = [kv for kv in sorted(weights.items(), key=lambda kv: -abs(kv[1])) if is_reason(kv[0], constant)]
        toward = [kv for kv in by_size if (kv[1] > 0) == up and kv[1] != 0][:k]

        words = [describe_push(n, w, observation, training_ranges, rule, steps_per_window=steps_per_window) for n, w in toward]
        # a learned policy weighs pushes both ways: name the strongest one it overrode
        against = next((kv for kv in by_size if (kv[1] > 0) != up and kv[1] != 0), None)
        if against is not None and (not toward or abs(against[1]) > abs(toward[-1][1])):
            text = describe_push(*against, observation, training_ranges, rule, steps_per_window=steps_per_window)
            words.append("held back by " + text)
        because = "; ".join(words)
        parts.append(f"{changed}: {because}" if because else changed)
    return ". ".join(parts)


def training_ranges(policy: Any, margin_std: float = 2.0) -> dict[str, tuple[float, float]]:
    """Per feature, the range a learned policy saw in training (mean +- 2 std, within what it saw)."""
    card = getattr(policy, "card", None) or {}
    stats = card.get("observation_stats") or {}
    names = [f[0] for f in (card.get("observation") or {}).get("features", [])]
    need = ("low", "high", "mean", "std")
    if not names or not all(len(stats.get(x, [])) == len(names) for x in need):
        return {}
    out = {}
    for n, lo, hi, m, s in zip(names, stats["low"], stats["high"], stats["mean"], stats["std"]):
        out[n] = (max(lo, m - margin_std * s), min(hi, m + margin_std * s))
    return out


# -- whole runs --------------------------------------------------------------------------------
def decision_changes(decisions: Iterable[Any], initial: Mapping[str, float]) -> list[tuple[Any, dict[str, str]]]:
    """Each decision with what it changed per dimension (``{"lr": "lr x2", ...}``), from the hyperparameters
    before it (the previous decision's, the ``initial`` ones for the first)."""
    out = []
    before = dict(initial)
    for d in decisions:
        hp = _get(d, "hyperparameters") or {}
        changes = {dim: c for dim in DIM_WORDS if (c := what_changed(dim, before, hp)) is not None}
        out.append((d, changes))
        before = dict(hp)
    return out


def why_without_change(reason: str, changes: Mapping[str, str]) -> str:
    """A decision's reason without its leading restatement of the one change ("lr x3: ..." -> "...")."""
    if len(changes) == 1:
        only = next(iter(changes.values()))
        if reason.startswith(only + ": "):
            return reason[len(only) + 2 :]
    return reason


def _get(d: Any, key: str) -> Any:
    return d.get(key) if isinstance(d, Mapping) else getattr(d, key, None)


def summarize_decisions(decisions: Sequence[Any], initial: Mapping[str, float], max_lines: int = 6) -> list[str]:
    """What the policy did over a run, and why, in a few sentences (the demo and the MLflow run page).

    ``"raised the lr 7 times (x2 each, reaching 0.0013; steps 20-140); strongest input (median over
    those decisions): update ratio 6.3e-5, below its usual 1e-4 to 1e-1"``: per dimension and direction, the
    feature that most often pushed hardest, at its median value over those decisions.
    """
    lines: list[str] = []
    groups: dict[tuple[str, str], list[tuple[Any, str]]] = {}
    for d, changes in decision_changes(decisions, initial):
        for dim, text in changes.items():
            if _get(d, "source") == "guardrail":
                continue
            groups.setdefault((dim, _direction(dim, text)), []).append((d, text))
    for (dim, direction), items in sorted(groups.items(), key=lambda kv: -len(kv[1]))[:max_lines]:
        n = len(items)
        first, last = items[0][0], items[-1][0]
        when = f"step {_get(first, 'step')}" if n == 1 else f"steps {_get(first, 'step')}-{_get(last, 'step')}"
        how = _how(dim, items)
        why = _common_reason(dim, [d for d, _ in items])
        times = "once" if n == 1 else "twice" if n == 2 else f"{n} times"
        the = "the " if dim in ("lr", "weight_decay") else ""
        lines.append(f"{direction} {the}{DIM_WORDS[dim]} {times} ({how}; {when})" + (f"; {why}" if why else ""))
    guards = [d for d in decisions if _get(d, "source") == "guardrail"]
    if guards:
        kinds: dict[str, int] = {}
        for g in guards:
            kind = str(_get(g, "reason") or "").split(":")[0] or "intervention"
            kinds[kind] = kinds.get(kind, 0) + 1
        lines.append(
            "guardrails stepped in "
            + ", ".join(f"{n}x {k}" for k, n in kinds.items())
            + " (non-finite skips and rollbacks halve the lr multiplier, undone over the following healthy steps)"
        )
    fallbacks = [d for d in decisions if _get(d, "source") == "fallback"]
    if fallbacks:
        lines.append(fallback_sentence(fallbacks))
    return lines


def _direction(dim: str, text: str) -> str:
    if dim == "clip":
        return {"clipping off": "switched off", "clipping on": "switched on"}.get(
            " ".join(text.split()[:2]), "loosened" if "loosened" in text else "tightened"
        )
    if dim == "dropout":
        a, b = (float(x) for x in text.split()[1::2][:2])
        return "raised" if b > a else "lowered"
    return "raised" if " x" in text else "lowered"


def _how(dim: str, items: list[tuple[Any, str]]) -> str:
    if dim in ("lr", "weight_decay"):
        key = dim
        factors = sorted({t.split()[-1] for _, t in items})
        first_hp = _get(items[0][0], "hyperparameters") or {}
        last_hp = _get(items[-1][0], "hyperparameters") or {}
        each = f"{factors[0]} each" if len(factors) == 1 else f"{factors[0]} to {factors[-1]}"
        return f"{each}, reaching {last_hp.get(key, first_hp.get(key, math.nan)):.2g}"
    return ", ".join(t for _, t in items[-2:])


def _common_reason(dim: str, decisions: list[Any]) -> str:
    """The feature that most often pushed ``dim`` hardest across ``decisions``, in words at its median value
    over them (``"strongest input (median over those decisions): update ratio 6.3e-5, ..."``); a flag or a
    feature that did not vary reads without the label."""
    counts: dict[str, list[float]] = {}
    for d in decisions:
        attr = {k: w for k, w in ((_get(d, "attribution") or {}).get(dim) or {}).items() if is_reason(k)}
        if not attr:
            continue
        key = max(attr.items(), key=lambda kv: abs(kv[1]))[0]
        name, _ = _feature_of(key)
        counts.setdefault(name, []).append((_get(d, "observation") or {}).get(name, math.nan))
    if not counts:
        return ""
    name, values = max(counts.items(), key=lambda kv: len(kv[1]))
    finite = sorted(v for v in values if v is not None and math.isfinite(v))
    if name not in FEATURE_WORDS or not finite:
        return f"strongest input: {name}"
    typical = finite[(len(finite) - 1) // 2]  # the lower median: a value some decision saw
    varied = finite[0] != finite[-1]  # a flag or a constant has no median worth naming
    label = "strongest input (median over those decisions)" if varied else "strongest input"
    return f"{label}: {describe_feature(name, typical)}"


def fallback_sentence(fallbacks: Sequence[Any]) -> str:
    """Why decisions were marked "fallback", in words, naming the commonest cause."""
    causes: dict[str, int] = {}
    for d in fallbacks:
        reason = str(_get(d, "reason") or "")
        if reason.startswith("hold"):
            cause = reason.split(":", 2)[1].strip() if ":" in reason else "the policy failed"
        elif "out of distribution (" in reason:
            cause = "outside its training range: " + reason.split("out of distribution (", 1)[1].split(")", 1)[0]
        else:
            cause = "other"
        causes[cause] = causes.get(cause, 0) + 1
    top = max(causes.items(), key=lambda kv: kv[1])[0]
    n = len(fallbacks)
    return (
        f"{n} decision{'s were' if n > 1 else ' was'} a fallback: the learned policy's observation left the range "
        f"it was trained on (or asking it failed), so the hand-written heuristic decided (or chuck held); "
        f"most often {top}"
    )


def run_description(decisions: Sequence[Any], meta: Mapping[str, Any], largest: int = 5) -> str:
    """The MLflow run page's description (Markdown): what the policy did and why, the largest changes,
    and where the details are."""
    initial = meta.get("initial") or {}
    counts: dict[str, int] = {}
    for d in decisions:
        counts[str(_get(d, "source"))] = counts.get(str(_get(d, "source")), 0) + 1
    last = (_get(decisions[-1], "hyperparameters") or {}) if decisions else {}
    lr0, lr1 = initial.get("lr", math.nan), last.get("lr", math.nan)
    out = [
        f"### {meta.get('title') or 'chuck'}",
        "",
        f"chuck made **{len(decisions)} decisions** ({', '.join(f'{n} {s}' for s, n in counts.items())}); "
        f"the lr went {lr0:.3g} -> {lr1:.3g}.",
        "",
    ]
    out += [f"- {line}" for line in summarize_decisions(decisions, initial)]
    sized = []
    for d, changes in decision_changes(decisions, initial):
        size = sum(
            abs(math.log(float(t.split()[1][1:])))
            if t.split()[1][:1] in "x/" and t.split()[1][1:].replace(".", "", 1).isdigit()
            else 1.0
            for t in changes.values()
        )
        if changes:
            sized.append((size, d, changes))
    if sized:
        out += ["", "Largest changes:", "", "| step | source | what changed | why |", "|---|---|---|---|"]
        for _, d, changes in sorted(sized, key=lambda t: -t[0])[:largest]:
            why = str(_get(d, "reason") or "").replace("|", "/")
            out.append(f"| {_get(d, 'step')} | {_get(d, 'source')} | {'; '.join(changes.values())} | {why} |")
    out += [
        "",
        "Every decision: artifact `chuck/timeline.html` (interactive; hover a decision), `chuck/timeline.png`, "
        "`chuck/decisions.csv`; the raw observations: `chuck/observations.csv`. The *Model metrics* tab's "
        "**Training** section plots the losses next to the lr and weight decay; the **chuck** section clipping "
        "(on/off, threshold / median gradient norm), dropout, and `decision_source` (each decision: 0 policy, "
        "1 fallback, 2 guardrail).",
    ]
    return "\n".join(out)
