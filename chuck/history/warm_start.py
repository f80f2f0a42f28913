"""Warm starts: starting hyperparameters drawn from the nearest past runs.

:func:`nearest_runs` ranks the history by fingerprint distance
(:func:`chuck.history.fingerprints.fingerprint_vector`); :func:`suggest_hyperparameters`
turns the nearest ones into a starting lr, weight decay and clip, using what chuck
learned in each run (initial value times the multiplier it ended on), not the user's
decayed schedule value.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from torch import nn

from chuck.history.fingerprints import fingerprint, fingerprint_vector
from chuck.history.storage import read_history


@dataclass
class Suggestion:
    """Starting hyperparameters drawn from similar past runs.

    Attributes:
        lr, weight_decay, clip: the suggestion (``clip`` is ``inf`` for "no clipping").
        distance: fingerprint distance to the nearest run used (0 = same task shape).
        runs: run ids the suggestion was drawn from, nearest first.
        source: ``"history"`` or ``"none"`` (no usable history: the caller should cold-start).
    """

    lr: float | None
    weight_decay: float | None
    clip: float | None
    distance: float
    runs: list[str]
    source: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def nearest_runs(fp: dict[str, Any], k: int = 5, history: Any = None, max_distance: float = math.inf) -> list[tuple[float, dict]]:
    """The ``k`` finished, non-diverged runs nearest to ``fp``: (distance, row) pairs, nearest first."""
    df = read_history() if history is None else history
    if df is None or len(df) == 0:
        return []
    target = fingerprint_vector(fp)
    out = []
    for row in df.iter_rows(named=True):
        if row.get("outcome_diverged") or not row.get("final_lr"):
            continue
        rfp = {k[3:]: v for k, v in row.items() if k.startswith("fp_")}
        d = float(np.linalg.norm(fingerprint_vector(rfp) - target))
        if d <= max_distance:
            out.append((d, row))
    out.sort(key=lambda x: x[0])
    return out[:k]


def learned_value(row: dict, name: str, mult: str) -> float | None:
    """What a past run learned for ``name`` ("lr", "weight_decay"): its initial value times the
    multiplier chuck ended on (``mult``: "lr_mult", "wd_mult"), or the final value when the
    record has no multiplier."""
    start, m = row.get(f"initial_{name}"), row.get(f"final_{mult}")
    return start * m if start and m else row.get(f"final_{name}")


def _score(row: dict) -> float:
    """How well a run went, comparable across tasks: log(final / initial loss), lower is better."""
    init = row.get("outcome_initial_train_loss")
    final = row.get("outcome_best_val_loss") or row.get("outcome_final_train_loss")
    if not init or not final or not (init > 0 and final > 0):
        return 0.0
    return math.log(final / init)


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
    """Starting lr, weight decay and clip from the nearest past runs' outcomes.

    Each of the ``k`` nearest non-diverged runs within ``max_distance`` votes with what chuck
    learned during it: its initial lr and weight decay times the multipliers chuck ended on
    (the user's own schedule factored out: a cosine schedule's final lr is near zero and says
    nothing about a good start), weighted by ``exp(-score) / (distance + 0.1)``, where the score
    is log(best / initial loss). lr and weight decay are combined geometrically; clip takes the
    weighted median. Records without multipliers (from ``chuck.tune``) vote with their values.
    """
    fp = fingerprint(model, optimizer, batch_size=batch_size, data_size=data_size)
    near = nearest_runs(fp, k=k, history=history, max_distance=max_distance)
    if not near:
        return Suggestion(None, None, None, math.inf, [], "none")
    w = np.array([math.exp(-_score(r)) / (d + 0.1) for d, r in near])
    w = w / w.sum()

    def geo(name: str, mult: str) -> float | None:
        vals = [(wi, v) for wi, (_, r) in zip(w, near) if (v := learned_value(r, name, mult)) and v > 0]
        if not vals:
            return None
        ws = np.array([a for a, _ in vals])
        return float(np.exp(np.sum(ws * np.log([v for _, v in vals])) / ws.sum()))

    clips = sorted((r.get("final_clip") or math.inf, wi) for wi, (_, r) in zip(w, near))
    acc, clip = 0.0, math.inf
    for c, wi in clips:
        acc += wi
        if acc >= 0.5:
            clip = c
            break
    wd = geo("weight_decay", "wd_mult")
    return Suggestion(
        lr=geo("lr", "lr_mult"),
        weight_decay=wd if wd is not None else 0.0,
        clip=clip,
        distance=near[0][0],
        runs=[r["run_id"] for _, r in near],
        source="history",
    )
