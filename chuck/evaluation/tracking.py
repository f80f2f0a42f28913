"""MLflow logging of an evaluation: a parent run with the summary and the plot, one child per arm.

The parent's metrics ``ARM.METRIC`` pool every base optimizer; ``by_base.BASE.ARM.METRIC`` are one
base's (each child run carries its arm's as ``BASE.METRIC``). The base optimizers are the param and
tag ``base_optimizers``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import chuck.tracking as tracking
from chuck.evaluation.stats import ArmStats, Summary, summary_paths, write_summary

HEADLINE = (
    "median_regret",
    "geo_regret",
    "within_10pct",
    "worst_regret",
    "catastrophes",
    "harm_rate",
    "worst_harm",
    "harm_beyond_aa",
)


def metric_name(text: str) -> str:
    """MLflow metric names allow letters, digits, ``_-. /:`` only."""
    return re.sub(r"[^A-Za-z0-9_\-. /:]", "_", text)


def _metrics(stats: ArmStats, prefix: str = "") -> dict[str, float]:
    return {prefix + k: float(getattr(stats, k)) for k in HEADLINE if getattr(stats, k, None) is not None}


def log_summary(summary: Summary, out: Path, tracking_uri: str | None, experiment: str) -> str:
    """Log ``summary`` to MLflow (chuck's store unless ``tracking_uri``); rewrite its files with the run id; return it."""

    mlflow = tracking.setup(tracking_uri, experiment)
    s = summary.settings
    params: dict[str, Any] = {
        "policies": ",".join(s["policies"]) or "-",
        "baselines": ",".join(s["baselines"]) or "-",
        "tasks": ",".join(s["tasks"]),
        "lrs": ",".join(f"{x:g}" for x in s["lrs"]),
        "seeds": ",".join(str(x) for x in s["seeds"]),
        "budget_scale": s["budget_scale"],
        "observe": s["observe"],
        "oracle_lrs": ",".join(f"{x:g}" for x in s["oracle_lrs"]),
        "out": str(out.resolve()),
    }
    bases = list(s.get("base_optimizers") or ["AdamW"])
    params["base_optimizers"] = ",".join(bases)
    grids = s.get("grids") or {}
    if len(bases) > 1:  # "lrs" and "oracle_lrs" are the first base's; the others' grids beside them
        for base in bases[1:]:
            if base in grids:
                params[metric_name(f"lrs.{base}")] = ",".join(f"{x:g}" for x in grids[base]["lrs"])
                params[metric_name(f"oracle_lrs.{base}")] = ",".join(f"{x:g}" for x in grids[base]["oracle_lrs"])
    with mlflow.start_run(run_name=f"evaluate {str(s['task_spec'])[:60]}") as run:
        summary.mlflow_run_id = run.info.run_id
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        mlflow.set_tag("base_optimizers", params["base_optimizers"])
        headline: dict[str, float] = {}
        for arm, stats in summary.arms.items():
            headline.update(_metrics(stats, metric_name(arm) + "."))
        for base, arms in summary.by_base.items():
            for arm, stats in arms.items():
                headline.update(_metrics(stats, metric_name(f"by_base.{base}.{arm}.")))
        mlflow.log_metrics(headline)
        mlflow.log_metrics({"runs": summary.rows, "executed": summary.executed})
        for name, h in summary.hindsight.items():
            mlflow.log_metrics(_metrics(ArmStats(**h), metric_name(f"hindsight.{name.replace(' ', '_')}.")))
        if summary.aa_control:
            aa = summary.aa_control
            mlflow.log_metrics(_metrics(ArmStats(**aa["oracle"]), "aa.oracle."))
            mlflow.log_metrics({f"aa.tuned.{k}": float(v) for k, v in aa["harm"].items()})
        for arm, stats in summary.arms.items():
            with mlflow.start_run(run_name=arm, nested=True):
                mlflow.set_tag("arm", arm)
                metrics = _metrics(stats)
                for lr, st in stats.per_lr.items():
                    metrics[f"geo_regret_lr_{float(lr):g}"] = st.geo_regret
                for fam, st in stats.per_family.items():
                    metrics[metric_name(f"geo_regret.{fam}")] = st.geo_regret
                    if st.worst_regret is not None:
                        metrics[metric_name(f"worst_regret.{fam}")] = st.worst_regret
                for base, arms in summary.by_base.items():
                    if arm in arms:
                        metrics.update(_metrics(arms[arm], metric_name(f"{base}.")))
                mlflow.log_metrics(metrics)
        write_summary(summary, out)
        for path in (*summary_paths(out, s.get("observe", True)), out / "rows.csv"):
            mlflow.log_artifact(str(path))
        if summary.plot:
            mlflow.log_artifact(summary.plot)
        if summary.aa_control and summary.aa_control.get("plot"):
            mlflow.log_artifact(summary.aa_control["plot"])
    return summary.mlflow_run_id
