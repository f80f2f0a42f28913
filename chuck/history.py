"""Run history: one record per ChuckOptimizer run, stored as Parquet under ``$CHUCK_HOME/history``.

Every run writes exactly one file, ``run-<utc time>-<uuid>.parquet``, written to
a temporary name and renamed into place (atomic on POSIX). Concurrent writers
from many processes therefore never touch the same file and nothing is lost;
readers see either a whole record or none. A file that cannot be read
(truncated, corrupt, foreign) is reported with a warning and skipped, never fatal.

A record holds the task fingerprint (see :func:`fingerprint`), the initial and
final hyperparameters, a summary of the decision trail, the outcome and the
policy id. :func:`nearest_runs` and :func:`suggest_hyperparameters` turn the
history into warm starts.

polars is imported only here, when a record is written or read.
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from chuck.home import chuck_home

#: Layer types counted in a fingerprint.
_LAYER_TYPES = {
    "linear": (nn.Linear,),
    "conv": (nn.Conv1d, nn.Conv2d, nn.Conv3d),
    "rnn": (nn.RNNBase,),
    "attention": (nn.MultiheadAttention,),
    "embedding": (nn.Embedding,),
}
_ACTIVATIONS = {
    "relu": (nn.ReLU, nn.ReLU6, nn.LeakyReLU),
    "gelu": (nn.GELU, nn.SiLU, nn.Mish),
    "tanh": (nn.Tanh,),
    "sigmoid": (nn.Sigmoid,),
}
_NORMS = {
    "batch": (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d),
    "layer": (nn.LayerNorm, nn.RMSNorm),
    "group": (nn.GroupNorm,),
}
OPTIMIZER_CLASSES = ("AdamW", "Adam", "SGD", "RMSprop")


def history_dir() -> Path:
    d = chuck_home() / "history"
    d.mkdir(parents=True, exist_ok=True)
    return d


def fingerprint(
    model: nn.Module | None,
    optimizer: Any = None,
    *,
    batch_size: int | None = None,
    data_size: int | None = None,
    loss_kind: str | None = None,
) -> dict[str, Any]:
    """What a run's task looks like, without running it: sizes, layer and activation mix, optimizer."""
    fp: dict[str, Any] = {
        "param_count": 0, "depth": 0, "normalization": "none", "optimizer": None,
        "batch_size": batch_size, "data_size": data_size, "loss_kind": loss_kind,
    }
    fp.update({f"n_{k}": 0 for k in _LAYER_TYPES})
    fp.update({f"act_{k}": 0 for k in _ACTIVATIONS})
    if model is not None:
        mods = list(model.modules())
        fp["param_count"] = int(sum(p.numel() for p in model.parameters()))
        for k, types in _LAYER_TYPES.items():
            fp[f"n_{k}"] = sum(isinstance(m, types) for m in mods)
        for k, types in _ACTIVATIONS.items():
            fp[f"act_{k}"] = sum(isinstance(m, types) for m in mods)
        fp["depth"] = fp["n_linear"] + fp["n_conv"] + fp["n_rnn"] + fp["n_attention"]
        norms = [k for k, types in _NORMS.items() if any(isinstance(m, types) for m in mods)]
        fp["normalization"] = "+".join(norms) if norms else "none"
    if optimizer is not None:
        base = getattr(optimizer, "optimizer", optimizer)  # unwrap a ChuckOptimizer
        fp["optimizer"] = type(base).__name__
    return fp


def _vector(fp: dict[str, Any]) -> np.ndarray:
    """Fingerprint -> feature vector for nearest-neighbour search (scales chosen so one unit is 'a lot')."""
    depth = max(fp.get("depth") or 0, 1)
    layer_mix = [(fp.get(f"n_{k}") or 0) / depth for k in _LAYER_TYPES]
    acts = [fp.get(f"act_{k}") or 0 for k in _ACTIVATIONS]
    act_total = max(sum(acts), 1)
    opt = fp.get("optimizer")
    return np.array([
        math.log10(max(fp.get("param_count") or 1, 1)),           # one decade of parameters = 1
        math.log2(depth) / 2,                                       # 4x deeper = 1
        *layer_mix,
        *[a / act_total for a in acts],
        0.0 if (fp.get("normalization") or "none") == "none" else 1.0,
        *[1.0 if opt == o else 0.0 for o in OPTIMIZER_CLASSES],
        math.log2(fp["batch_size"]) / 3 if fp.get("batch_size") else 0.0,   # 8x the batch = 1
        math.log10(fp["data_size"]) if fp.get("data_size") else 0.0,
    ], dtype=np.float64)


@dataclass
class RunRecord:
    """One finished run. Flattened into one Parquet row (nested parts as JSON strings)."""

    run_id: str
    created: float
    policy_id: str
    fingerprint: dict[str, Any]
    initial: dict[str, float]
    final: dict[str, float]
    outcome: dict[str, Any]
    decisions: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    def to_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {"run_id": self.run_id, "created": self.created, "policy_id": self.policy_id, "label": self.label}
        row.update({f"fp_{k}": v for k, v in self.fingerprint.items()})
        row.update({f"initial_{k}": _f(v) for k, v in self.initial.items()})
        row.update({f"final_{k}": _f(v) for k, v in self.final.items()})
        row.update({f"outcome_{k}": (_f(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
                    for k, v in self.outcome.items()})
        row["decisions_json"] = json.dumps(self.decisions, default=float)
        return row


def _f(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def write_record(record: RunRecord, directory: str | Path | None = None) -> Path:
    """Write one record atomically; returns its path."""
    import polars as pl

    d = Path(directory) if directory else history_dir()
    d.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(record.created))
    path = d / f"run-{stamp}-{record.run_id}.parquet"
    tmp = d / f".{path.name}.{os.getpid()}.tmp"
    pl.DataFrame([record.to_row()]).write_parquet(tmp)
    os.replace(tmp, path)
    return path


def read_history(directory: str | Path | None = None) -> Any:
    """All records as one polars DataFrame (empty if none). Unreadable files are warned about and skipped."""
    import polars as pl

    d = Path(directory) if directory else history_dir()
    frames = []
    for path in sorted(d.glob("run-*.parquet")):
        try:
            frames.append(pl.read_parquet(path))
        except Exception as exc:  # noqa: BLE001 - corrupt, truncated or foreign file
            warnings.warn(f"chuck history: skipping unreadable record {path.name} ({type(exc).__name__}: {exc})",
                          RuntimeWarning, stacklevel=2)
    if not frames:
        return pl.DataFrame()
    return pl.concat(frames, how="diagonal_relaxed").sort("created")


def record_from_optimizer(opt: Any, *, label: str = "", batch_size: int | None = None, data_size: int | None = None,
                          loss_kind: str | None = None) -> RunRecord:
    """Summarize a ChuckOptimizer run into a record."""
    lm = opt.loss_monitor
    val = [v for _, v, _ in lm._val]
    sources: dict[str, int] = {}
    for d in opt.decisions:
        sources[d.source] = sources.get(d.source, 0) + 1
    lr_mults = [d.hyperparameters.get("lr_mult", 1.0) for d in opt.decisions] or [1.0]
    g = opt.guardrails
    diverged = bool(opt.weight_monitor.stats().get("weights.nonfinite_fraction", 0.0) or 0.0) or (
        lm.history > 0 and not math.isfinite(lm._ema))
    return RunRecord(
        run_id=uuid.uuid4().hex,
        created=time.time(),
        policy_id=opt.policy_id,
        fingerprint=fingerprint(opt.model, opt.optimizer, batch_size=batch_size, data_size=data_size, loss_kind=loss_kind),
        initial=dict(opt._initial_hyperparameters),
        final={k: v for k, v in opt.hyperparameters.items() if not k.startswith("knob.")},
        outcome={
            "steps": opt.step_count,
            "initial_train_loss": float(np.mean(lm._initial)) if lm._initial else math.nan,
            "final_train_loss": lm._ema,
            "best_val_loss": min(val) if val else math.nan,
            "final_val_loss": val[-1] if val else math.nan,
            "diverged": diverged,
            "skips": g.skips if g else 0,
            "rollbacks": g.rollbacks if g else 0,
        },
        decisions={"count": len(opt.decisions), "by_source": sources, "lr_mult_min": min(lr_mults),
                   "lr_mult_max": max(lr_mults), "lr_mult_final": lr_mults[-1]},
        label=label,
    )


# -- warm start --------------------------------------------------------------
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
    target = _vector(fp)
    out = []
    for row in df.iter_rows(named=True):
        if row.get("outcome_diverged") or not row.get("final_lr"):
            continue
        rfp = {k[3:]: v for k, v in row.items() if k.startswith("fp_")}
        d = float(np.linalg.norm(_vector(rfp) - target))
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
    return Suggestion(lr=geo("lr", "lr_mult"), weight_decay=wd if wd is not None else 0.0, clip=clip,
                      distance=near[0][0], runs=[r["run_id"] for _, r in near], source="history")


def filter_history(df: Any, *, optimizer: str | None = None, policy: str | None = None, label: str | None = None,
                   min_params: int | None = None, max_params: int | None = None, limit: int | None = None) -> Any:
    """Filter a history frame (the ``chuck history`` options)."""
    import polars as pl

    if len(df) == 0:
        return df
    if optimizer:
        df = df.filter(pl.col("fp_optimizer") == optimizer)
    if policy:
        df = df.filter(pl.col("policy_id").str.contains(policy, literal=True))
    if label:
        df = df.filter(pl.col("label").str.contains(label, literal=True))
    if min_params is not None:
        df = df.filter(pl.col("fp_param_count") >= min_params)
    if max_params is not None:
        df = df.filter(pl.col("fp_param_count") <= max_params)
    if limit:
        df = df.tail(limit)
    return df


def summary_columns(df: Any) -> Sequence[str]:
    wanted = ["created", "label", "policy_id", "fp_param_count", "fp_optimizer", "initial_lr", "final_lr",
              "outcome_steps", "outcome_best_val_loss", "outcome_final_train_loss", "outcome_diverged"]
    return [c for c in wanted if c in df.columns]
