"""Warm starts: starting hyperparameters drawn from the nearest past runs that went well.

:func:`nearest_runs` ranks the history by fingerprint distance; :func:`rank_runs` judges
each run by how it *ended* (:func:`chuck.history.outcomes.classify_run`) and gives it a
weight; :func:`suggest_hyperparameters` turns the weighted runs into a starting lr, weight
decay and clip, and says what the suggestion rests on.

**What a run votes for: what it started with.** A run's outcome is the outcome of its start:
the lr, weight decay and clip it began from (:func:`start_value`), under whatever policy and
schedule then steered it. So a warm start repeats the starts of the runs that ended well. It
never repeats what a run ended on: under chuck's cooldown (or a cosine schedule) the final lr is
the end of an anneal, 10-100x below any lr worth starting from, and a run that recovered from a
poor start still ended with its multiplier wherever that recovery left it. The lr a run used
most is recorded too (``lr_median``), for people reading the history. Records written before
``lr_start`` existed fall back to ``initial_lr`` (the lr when the ChuckOptimizer was built:
the same value unless a scheduler changed it before the first step).

**Distance.** Two runs' fingerprints (:func:`chuck.history.fingerprints.fingerprint_vector`)
are compared as vectors whose axes are scaled so that one unit is one large difference:
ten times the parameters, four times the depth, an entirely different layer mix,
normalization on versus off, eight times the batch, ten times the data. Another
activation function or optimizer class moves two axes by one (about 1.4). So 0 means the
same model shape, optimizer, batch and data, and the distances add up like lengths: two
instances of one zoo family (another width, depth, activation or batch) typically lie 1
to 2.5 apart. The default horizon is 3.

**Weights.** Diverged and collapsed runs are left out (they would vote for the lr that broke
them). Each remaining run weighs ``outcome x closeness``: closeness is ``1 / (distance + 0.1)``;
outcome is ``exp(-(score - best score) / OUTCOME_TEMPERATURE)`` with score ``log(final loss /
initial loss)``, so the run that ended best counts fully and one that ended 28% higher
(relative to where it started) counts ``1/e`` as much. Runs without a score (no recorded
initial or final loss: ``chuck.tune``'s records) count as the median scored run.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from torch import nn

from chuck.history.fingerprints import fingerprint, fingerprint_vector
from chuck.history.outcomes import RunOutcome, classify_run
from chuck.history.storage import read_history

#: Scale of the outcome weight: runs whose log(final / initial loss) is this much above the best
#: run's count 1/e as much. 0.25 (a final loss 28% higher relative to its start) lets the runs that
#: ended well outvote a larger number of runs that ended at chance level.
OUTCOME_TEMPERATURE = 0.25

#: Closeness ``1 / (distance + DISTANCE_OFFSET)``: a run of the same shape (0) counts 10x one at
#: distance 0.9, and the offset keeps an exact match from taking all the weight.
DISTANCE_OFFSET = 0.1


@dataclass
class RankedRun:
    """One past run as a warm start sees it.

    Attributes:
        distance: fingerprint distance to the query (see the module docstring).
        row: the history record.
        outcome: how it ended (:class:`chuck.history.outcomes.RunOutcome`).
        weight: its share of the vote (0 for a failed run; the used ones sum to 1).
        lr, weight_decay, clip: what it started with (:func:`start_value`; ``lr`` None when the
            record has none).
    """

    distance: float
    row: dict[str, Any]
    outcome: RunOutcome
    weight: float = 0.0
    lr: float | None = None
    weight_decay: float | None = None
    clip: float = math.inf

    @property
    def run_id(self) -> str:
        return str(self.row.get("run_id", ""))


@dataclass
class Suggestion:
    """Starting hyperparameters drawn from similar past runs, and what they rest on.

    Attributes:
        lr, weight_decay, clip: the suggestion (``clip`` is ``inf`` for "no clipping").
        distance: fingerprint distance to the nearest run used (0 = same task shape; the
            scale is explained in :mod:`chuck.history.warm_start`).
        runs: run ids the suggestion was drawn from, nearest first.
        source: ``"history"`` or ``"none"`` (no usable history: the caller should cold-start).
        distances: the fingerprint distance of each run in ``runs``.
        weights: each run's share of the vote, in the order of ``runs`` (they sum to 1).
        excluded: the nearby runs left out, each ``{"run_id", "status", "reason", "distance"}``
            (diverged and collapsed runs).
        effective_runs: how many runs the vote is worth (Kish: ``1 / sum(weight^2)``); one run
            that outweighs the rest counts about 1.
        lr_spread: weighted standard deviation of the voting runs' log10 lr: how far they
            disagree, in decades.
        confidence: ``"high"``, ``"medium"``, ``"low"`` (or ``"none"``), from the distance, the
            agreement and the number of runs; :attr:`basis` says why.
        basis: the suggestion and what it is based on, in words.
    """

    lr: float | None
    weight_decay: float | None
    clip: float | None
    distance: float
    runs: list[str]
    source: str
    distances: list[float] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    excluded: list[dict[str, Any]] = field(default_factory=list)
    effective_runs: float = 0.0
    lr_spread: float = math.nan
    confidence: str = "none"
    basis: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return self.basis


def nearest_runs(
    fp: dict[str, Any], k: int | None = 5, history: Any = None, max_distance: float = math.inf, include_failed: bool = False
) -> list[tuple[float, dict]]:
    """The ``k`` runs nearest to ``fp`` that recorded an lr (all of them for ``k=None``):
    (distance, row) pairs, nearest first.

    Diverged and collapsed runs (:func:`chuck.history.outcomes.classify_run`) are left out
    unless ``include_failed``: their hyperparameters are the ones that broke them.
    """
    df = read_history() if history is None else history
    if df is None or len(df) == 0:
        return []
    target = fingerprint_vector(fp)
    out = []
    for row in df.iter_rows(named=True):
        if not start_value(row, "lr") or (not include_failed and classify_run(row).failed):
            continue
        rfp = {k[3:]: v for k, v in row.items() if k.startswith("fp_")}
        d = float(np.linalg.norm(fingerprint_vector(rfp) - target))
        if d <= max_distance:
            out.append((d, row))
    out.sort(key=lambda x: x[0])
    return out[:k]


def _number(v: Any) -> float | None:
    """A recorded number (``None`` for a missing, NaN or non-numeric value; infinity stays: clip off)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
        return None
    return float(v)


def start_value(row: dict, name: str) -> float | None:
    """What a past run started with for ``name`` ("lr", "weight_decay", "clip"): what a warm start repeats.

    The lr is ``lr_start`` (the base optimizer's lr at the first step, as the user set it); records
    written before that column existed fall back to ``initial_lr``. Every name falls back to the
    ``initial_`` column, and a hand-made record with neither to its ``final_`` value.
    """
    keys = ("lr_start", "initial_lr", "final_lr") if name == "lr" else (f"initial_{name}", f"final_{name}")
    for key in keys:
        v = _number(row.get(key))
        if v is not None:
            return v
    return None


def learned_value(row: dict, name: str, mult: str) -> float | None:
    """What a past run ended on for ``name`` ("lr", "weight_decay"): its initial value times the
    multiplier chuck ended on (``mult``: "lr_mult", "wd_mult"), or the final value when the record
    has no multiplier. After a cooldown this is the end of an anneal: warm starts use
    :func:`start_value` instead."""
    start, m = row.get(f"initial_{name}"), row.get(f"final_{mult}")
    return start * m if start and m else row.get(f"final_{name}")


def rank_runs(
    fp: dict[str, Any], k: int = 5, history: Any = None, max_distance: float = 3.0
) -> tuple[list[RankedRun], list[RankedRun]]:
    """The ``k`` nearest usable runs within ``max_distance``, weighted (see the module docstring),
    nearest first; and the failed runs nearer than the farthest used one (left out, for the record)."""
    candidates = nearest_runs(fp, k=None, history=history, max_distance=max_distance, include_failed=True)
    used: list[RankedRun] = []
    failed: list[RankedRun] = []
    for d, row in candidates:
        run = RankedRun(d, row, classify_run(row))
        if run.outcome.failed:
            failed.append(run)
            continue
        run.lr = start_value(row, "lr")
        run.weight_decay = start_value(row, "weight_decay")
        clip = start_value(row, "clip")
        run.clip = clip if clip is not None and clip > 0 else math.inf
        used.append(run)
        if len(used) == k:
            break
    if not used:
        return [], failed
    horizon = used[-1].distance
    failed = [r for r in failed if r.distance <= horizon] if len(used) == k else failed
    scores = [r.outcome.score for r in used if r.outcome.score is not None]
    best = min(scores) if scores else 0.0
    neutral = float(np.median(scores)) if scores else 0.0
    w = np.array(
        [
            math.exp(-((r.outcome.score if r.outcome.score is not None else neutral) - best) / OUTCOME_TEMPERATURE)
            / (r.distance + DISTANCE_OFFSET)
            for r in used
        ]
    )
    w = w / w.sum()
    for r, wi in zip(used, w):
        r.weight = float(wi)
    return used, failed


def _weighted_log_mean(pairs: list[tuple[float, float | None]]) -> tuple[float | None, float]:
    """Weighted geometric mean of positive values, and the weighted std of their log10 (decades)."""
    usable = [(w, v) for w, v in pairs if v is not None and v > 0 and math.isfinite(v)]
    if not usable:
        return None, math.nan
    ws = np.array([w for w, _ in usable])
    if ws.sum() <= 0:
        return None, math.nan
    logs = np.log10([v for _, v in usable])
    mean = float(np.sum(ws * logs) / ws.sum())
    spread = float(math.sqrt(np.sum(ws * (logs - mean) ** 2) / ws.sum()))
    return 10.0**mean, spread


#: Confidence thresholds: the nearest run's distance, the voters' lr spread (decades), the effective runs.
CLOSE, NEAR = 1.0, 2.0
AGREE, DISAGREE = 0.35, 0.75


def _confidence(nearest: float, spread: float, effective: float) -> tuple[str, str]:
    """How far to trust the suggestion, and why: close runs that agree, and more than one of them.

    ``high``: the nearest run is at most one large difference away (distance <= 1), the runs agree
    within a third of a decade and the vote is worth two runs or more. ``medium``: within two large
    differences and three quarters of a decade. ``low``: anything else.
    """
    spread = 0.0 if math.isnan(spread) else spread
    if nearest <= CLOSE and spread <= AGREE and effective >= 2.0:
        return "high", "close runs that agree"
    why = []
    if nearest > NEAR:
        why.append(f"the nearest run is {nearest:.2f} away, more than two large differences")
    elif nearest > CLOSE:
        why.append(f"the nearest run is {nearest:.2f} away, more than one large difference")
    if spread > DISAGREE:
        why.append("the runs disagree by more than three quarters of a decade")
    elif spread > AGREE:
        why.append("the runs disagree by more than a third of a decade")
    if effective < 2.0:
        why.append("it rests on about one run")
    level = "medium" if nearest <= NEAR and spread <= DISAGREE else "low"
    return level, "; ".join(why)


def suggest_hyperparameters(
    model: nn.Module,
    optimizer: Any = None,
    *,
    batch_size: int | None = None,
    data_size: int | None = None,
    k: int = 5,
    max_distance: float = 3.0,
    history: Any = None,
) -> Suggestion:
    """Starting lr, weight decay and clip from the nearest past runs that ended well.

    The ``k`` nearest runs within ``max_distance`` (fingerprint distance, explained in
    :mod:`chuck.history.warm_start`) that neither diverged nor collapsed each vote with what
    they started with (:func:`start_value`), never with what they ended on (after a cooldown
    or a cosine schedule the final lr is near zero and says nothing about a good start). A
    run's vote weighs by how it *ended* (its final loss against its initial one, relative to
    the best such run) and how close it is. lr and weight decay are combined geometrically;
    clip takes the weighted median.

    The returned :class:`Suggestion` says what it rests on: the runs, their distances and
    weights, the runs left out and why, how much the voters disagree and a confidence, in
    words in ``basis``.
    """
    fp = fingerprint(model, optimizer, batch_size=batch_size, data_size=data_size)
    return suggest_from_fingerprint(fp, k=k, max_distance=max_distance, history=history)


def suggest_from_fingerprint(fp: dict[str, Any], *, k: int = 5, max_distance: float = 3.0, history: Any = None) -> Suggestion:
    """:func:`suggest_hyperparameters` for a fingerprint (``chuck.tune`` knows the optimizer by name only)."""
    used, failed = rank_runs(fp, k=k, history=history, max_distance=max_distance)
    excluded: list[dict[str, Any]] = [
        {"run_id": r.run_id, "status": r.outcome.status, "reason": r.outcome.reason, "distance": r.distance} for r in failed
    ]
    if not used:
        why = f"{len(failed)} nearby run(s) failed: " + "; ".join(e["reason"] for e in excluded) if failed else ""
        basis = f"no usable run within fingerprint distance {max_distance:g} in the history" + (f" ({why})" if why else "")
        return Suggestion(None, None, None, math.inf, [], "none", excluded=excluded, basis=basis + ": cold-start instead")
    lr, spread = _weighted_log_mean([(r.weight, r.lr) for r in used])
    wd, _ = _weighted_log_mean([(r.weight, r.weight_decay) for r in used])
    acc, clip = 0.0, math.inf
    for r in sorted(used, key=lambda r: r.clip):
        acc += r.weight
        if acc >= 0.5:
            clip = r.clip
            break
    effective = 1.0 / sum(r.weight**2 for r in used)
    nearest = used[0].distance
    confidence, why = _confidence(nearest, spread, effective)
    s = Suggestion(
        lr=lr,
        weight_decay=wd if wd is not None else 0.0,
        clip=clip,
        distance=nearest,
        runs=[r.run_id for r in used],
        source="history",
        distances=[r.distance for r in used],
        weights=[r.weight for r in used],
        excluded=excluded,
        effective_runs=effective,
        lr_spread=spread,
        confidence=confidence,
    )
    s.basis = _describe(s, used, why)
    return s


def _describe(s: Suggestion, used: list[RankedRun], why: str) -> str:
    lr = f"lr {s.lr:.3g}" if s.lr is not None else "no lr"
    out = [
        f"starting {lr}, weight decay {s.weight_decay:.3g}, clip {s.clip:.3g} from {len(used)} past run(s), "
        f"repeating what they started with (worth {s.effective_runs:.1f} once weighted by how they ended and "
        "how close they are)",
        f"fingerprint distance {min(s.distances):.2f} to {max(s.distances):.2f} "
        "(0: the same model shape, optimizer, batch and data; 1: one large difference such as 10x the "
        "parameters, 4x the depth, normalization on or off or 8x the batch; another activation or optimizer: 1.4)",
    ]
    if not math.isnan(s.lr_spread):
        out.append(f"the runs' lrs spread over {s.lr_spread:.2f} decades")
    if s.excluded:
        counts: dict[str, int] = {}
        for e in s.excluded:
            counts[e["status"]] = counts.get(e["status"], 0) + 1
        out.append("left out " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    out.append(f"confidence {s.confidence}" + (f" ({why})" if why else ""))
    return "; ".join(out)
