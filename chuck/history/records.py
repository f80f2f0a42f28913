"""A run record: what one finished run leaves in the history, and how it gets there.

A record holds the task fingerprint (:mod:`chuck.history.fingerprints`), the initial
and final hyperparameters, the lr the run started from and the lr it used most
(``lr_start``, ``lr_median``: :class:`chuck.core.run_record.LrTrail`), a summary of the
decision trail, the outcome and the policy id. :func:`write_run_record` is the end-of-run entry point: it takes plain
data only, so the optimizer's finalizer can call it after the optimizer itself has
been garbage-collected, and it never raises into the user's
run (a missing polars is reported once per process, a full disk as "disk full").
"""

from __future__ import annotations

import json
import math
import time
import uuid
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chuck.history.fingerprints import fingerprint
from chuck.history.storage import report_polars_missing_once, write_rows


@dataclass
class RunRecord:
    """One finished run. Flattened into one Parquet row (nested parts as JSON strings).

    Attributes:
        initial: the hyperparameters when the ChuckOptimizer was built (``initial_*`` columns).
        final: the hyperparameters at the end (``final_*``): after any cooldown, so not a start to repeat.
        lr: ``{"start": ..., "median": ...}`` (``lr_start``, ``lr_median``): the base optimizer's lr at
            the first step as the user set it (no multiplier), and the median effective lr over the
            steps taken (:class:`chuck.core.run_record.LrTrail`). Records written before these fields
            existed lack the columns: readers fall back to ``initial_lr``
            (:func:`chuck.history.warm_start.start_value`).
    """

    run_id: str
    created: float
    policy_id: str
    fingerprint: dict[str, Any]
    initial: dict[str, float]
    final: dict[str, float]
    outcome: dict[str, Any]
    decisions: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    lr: dict[str, float] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {"run_id": self.run_id, "created": self.created, "policy_id": self.policy_id, "label": self.label}
        row.update({f"fp_{k}": v for k, v in self.fingerprint.items()})
        row.update({f"initial_{k}": _f(v) for k, v in self.initial.items()})
        row.update({f"final_{k}": _f(v) for k, v in self.final.items()})
        row.update({f"lr_{k}": _f(v) for k, v in self.lr.items()})
        row.update(
            {
                f"outcome_{k}": (_f(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
                for k, v in self.outcome.items()
            }
        )
        row["decisions_json"] = json.dumps(self.decisions, default=float)
        return row


def _f(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def write_record(record: RunRecord, directory: str | Path | None = None) -> Path:
    """Write one record atomically; returns its path. Raises (ImportError without polars,
    OSError "disk full"...): for the end of a run use :func:`write_run_record`."""
    return write_rows(record.to_row(), record.created, record.run_id, directory)


def summarize_decisions(decisions: Iterable[Any]) -> dict[str, Any]:
    """Count by source and the lr-multiplier range of a decision trail.

    Accepts :class:`chuck.Decision` objects or their ``as_dict()`` form.
    """
    sources: dict[str, int] = {}
    lr_mults: list[float] = []
    count = 0
    for d in decisions:
        source = d["source"] if isinstance(d, Mapping) else d.source
        hp = d["hyperparameters"] if isinstance(d, Mapping) else d.hyperparameters
        sources[source] = sources.get(source, 0) + 1
        lr_mults.append(float(hp.get("lr_mult", 1.0)))
        count += 1
    lr_mults = lr_mults or [1.0]
    return {
        "count": count,
        "by_source": sources,
        "lr_mult_min": min(lr_mults),
        "lr_mult_max": max(lr_mults),
        "lr_mult_final": lr_mults[-1],
    }


def build_run_record(
    *,
    policy_id: str,
    fingerprint: Mapping[str, Any],
    initial: Mapping[str, float],
    final: Mapping[str, float],
    outcome: Mapping[str, Any],
    decisions: Iterable[Any] | Mapping[str, Any] = (),
    label: str = "",
    lr: Mapping[str, float] | None = None,
) -> RunRecord:
    """A record from plain data; ``decisions`` is a trail (summarized) or an existing summary (a mapping);
    ``lr``: ``{"start", "median"}`` (:attr:`RunRecord.lr`; without it ``start`` is ``initial["lr"]``)."""
    summary = dict(decisions) if isinstance(decisions, Mapping) else summarize_decisions(decisions)
    return RunRecord(
        run_id=uuid.uuid4().hex,
        created=time.time(),
        policy_id=str(policy_id),
        fingerprint=dict(fingerprint),
        initial=dict(initial),
        final={k: v for k, v in final.items() if not k.startswith("knob.")},
        outcome=dict(outcome),
        decisions=summary,
        label=label,
        lr=dict(lr) if lr else ({"start": initial["lr"]} if "lr" in initial else {}),
    )


def write_run_record(
    *,
    policy_id: str,
    fingerprint: Mapping[str, Any],
    initial: Mapping[str, float],
    final: Mapping[str, float],
    outcome: Mapping[str, Any],
    decisions: Iterable[Any] | Mapping[str, Any] = (),
    label: str = "",
    lr: Mapping[str, float] | None = None,
    directory: str | Path | None = None,
) -> Path | None:
    """Write the record of a finished run from plain data; the path, or None when it could not be written.

    The end-of-run entry point (``close()``, ``with``, a ``weakref.finalize`` on the
    optimizer, interpreter exit): nothing here needs the optimizer object, and nothing
    raises. Without polars it says so once per process; any other failure (a full disk
    says "disk full") is one RuntimeWarning.
    """
    try:
        record = build_run_record(
            policy_id=policy_id,
            fingerprint=fingerprint,
            initial=initial,
            final=final,
            outcome=outcome,
            decisions=decisions,
            label=label,
            lr=lr,
        )
        return write_record(record, directory)
    except ModuleNotFoundError:  # not installed (a half-imported polars is a failure to say as such)
        report_polars_missing_once()
    except Exception as exc:  # noqa: BLE001 - a history failure must never break the user's run
        warnings.warn(f"chuck: could not write the run history record: {exc}", RuntimeWarning, stacklevel=2)
    return None


def record_from_optimizer(
    opt: Any, *, label: str = "", batch_size: int | None = None, data_size: int | None = None, loss_kind: str | None = None
) -> RunRecord:
    """Summarize a live ChuckOptimizer run into a record."""
    lm = opt.loss_monitor
    val = [v for _, v, _ in lm._val]
    g = opt.guardrails
    trail = getattr(opt, "_lr_trail", None)  # set by chuck.core.run_record.RunLedger when history is on
    lr = trail.summary() if trail is not None else {}
    diverged = bool(opt.weight_monitor.stats().get("weights.nonfinite_fraction", 0.0) or 0.0) or (
        lm.history > 0 and not math.isfinite(lm._ema)
    )
    return build_run_record(
        policy_id=opt.policy_id,
        fingerprint=fingerprint(opt.model, opt.optimizer, batch_size=batch_size, data_size=data_size, loss_kind=loss_kind),
        initial=opt._initial_hyperparameters,
        final=opt.hyperparameters,
        outcome={
            "steps": opt.step_count,
            "initial_train_loss": float(np.mean(lm._initial)) if lm._initial else math.nan,
            "final_train_loss": lm._ema,
            "best_val_loss": lm.best_val_loss,  # the whole run's best: lm._val keeps the last 100 evaluations only
            "final_val_loss": val[-1] if val else math.nan,
            "diverged": diverged,
            "skips": g.skips if g else 0,
            "rollbacks": g.rollbacks if g else 0,
            "overfit_rollbacks": g.overfit_rollbacks if g else 0,
            "restarts": g.start.restarts if g else 0,
        },
        decisions=opt.decisions,
        label=label,
        lr=lr or None,
    )
