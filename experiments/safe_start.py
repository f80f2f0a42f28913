"""The safe start (``ChuckOptimizer(..., safe_start=True)``, chuck/core/safe_start.py), measured paired.

Every instance (task, seed) is trained through :func:`chuck.evaluation.runs.run_one` (the function
``chuck evaluate`` runs: the instance's AdamW, the zoo's loop, validation every 20 steps through
``observe``, the task's budget as ``total_steps``) under ``chuck:POLICY`` from each starting lr twice,
without and with the safe start, and once under Prodigy (lr-free: one run stands for every starting
lr). The figures, per starting lr:

* the paired ratio of final validation losses, safe / plain: geometric mean with a 95% bootstrap
  interval over instances (``chuck.evaluation.stats.bootstrap_ci``), and the worst ratio;
* the "catastrophe" proxy without an oracle: runs whose final loss (uncapped; a crash or NaN counts
  as infinite) is ``CATASTROPHE`` (5x) Prodigy's final loss of the same instance or more, plain and safe;
* the harm side: the share of runs more than 5% worse with the safe start;
* the benchmark's resolution beside it (``--aa``): the plain arm trained again with the starting lr moved
  by 0.1% (``aa``), paired with the plain run the same way. The first steps of these runs are chaotic (a
  change that small moves many final losses by more than 5%, experiments/benchmark_resolution.py), so a
  ratio of the safe start is read against this A/A ratio, not against 1.

A diverged run counts with the divergence cap of ``chuck evaluate`` (``effective_loss``: 3x the larger
of the initial and the reference loss), a crashed one as 100x its pair. One torch thread, one process;
the CSV gets one flushed line per run and a rerun skips the runs already there (interrupt and resume
at will); the JSON is rewritten from the whole CSV at the end.

    OMP_NUM_THREADS=1 python experiments/safe_start.py --tasks validation --out docs/results/safe_start/validation
    OMP_NUM_THREADS=1 python experiments/safe_start.py --tasks test --out docs/results/safe_start/test

``--set KEY=VALUE`` (repeatable) changes a :class:`~chuck.core.safe_start.SafeStartConfig` field for the
safe arm (its variant name goes into the CSV, so variants share one file).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
LRS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
#: Starting lrs near most families' best, where the harm side is read.
HARM_LRS = (1e-3, 1e-2)
#: A run this many times Prodigy's final loss of the same instance (or worse) is a catastrophe.
CATASTROPHE = 5.0
WORSE = 1.05
#: The A/A arm's lr: the plain arm's moved by 0.1% (as in experiments/benchmark_resolution.py).
AA_SCALE = 1.001
FIELDS = (
    "task",
    "family",
    "seed",
    "lr",
    "arm",
    "variant",
    "final_loss",
    "effective_loss",
    "initial_loss",
    "diverged",
    "error",
    "stopped_at",
    "seconds",
)


@contextlib.contextmanager
def _safe_start(config: Any) -> Iterator[None]:
    """``run_one`` builds its chuck arm as ``chuck.ChuckOptimizer(...)``: within this block that
    constructor gets ``safe_start=config`` and the run's optimizer is kept for its safe-start record."""
    import chuck

    made: list[Any] = []
    original = chuck.ChuckOptimizer

    def build(*args: Any, **kwargs: Any) -> Any:
        opt = original(*args, safe_start=config, **kwargs)
        made.append(opt)
        return opt

    chuck.ChuckOptimizer = build  # type: ignore[misc]
    try:
        yield made  # type: ignore[misc]
    finally:
        chuck.ChuckOptimizer = original  # type: ignore[misc]


def run(task_id: str, seed: int, lr: float, arm: str, policy: str, config: Any) -> dict[str, Any]:
    from chuck.evaluation.runs import RunSpec, effective_loss, run_one, steps_for
    from chuck.zoo import get_task

    task = get_task(task_id)
    steps = steps_for(task, 1.0)
    stopped = ""
    if arm == "prodigy":
        r = run_one(RunSpec(task_id, seed, "prodigy", lr, steps))
    elif arm == "aa":
        with _safe_start(False):
            r = run_one(RunSpec(task_id, seed, f"chuck:{policy}", lr, steps, policy=policy, lr_scale=AA_SCALE))
    else:
        with _safe_start(config if arm == "safe" else False) as made:
            r = run_one(RunSpec(task_id, seed, f"chuck:{policy}", lr, steps, policy=policy))
        ss = made[0].safe_start if made else None
        stopped = ss.stopped_at if ss is not None else ""
    return {
        "task": task_id,
        "family": task.family,
        "seed": seed,
        "lr": lr,
        "arm": arm,
        "final_loss": r["final_loss"],
        "effective_loss": effective_loss(r),
        "initial_loss": r["initial_loss"],
        "diverged": int(bool(r["diverged"])),
        "error": r["error"],
        "stopped_at": stopped,
        "seconds": r["seconds"],
    }


def _raw(row: dict[str, Any]) -> float:
    """A run's final loss as it ended (a diverged run uncapped); a crash or a non-finite loss: inf."""
    v = float(row["final_loss"]) if row["final_loss"] not in ("", None) else math.nan
    return v if math.isfinite(v) and not row["error"] else math.inf


def _log_ratio(a: float, b: float) -> float:
    """log(a / b) of two effective losses; a crashed (inf) run counts as 100x its pair, two as level."""
    if math.isfinite(a) and math.isfinite(b):
        return math.log(max(a, 1e-12) / max(b, 1e-12))
    return math.log(100.0) * (int(not math.isfinite(a)) - int(not math.isfinite(b)))


def summarize(rows: list[dict[str, Any]], variant: str) -> dict[str, Any]:
    """Per starting lr (and over all): the paired figures of the module docstring."""
    loss: dict[tuple[str, int, float, str], float] = {}
    final: dict[tuple[str, int, float, str], float] = {}  # raw final losses (a crash or NaN: inf), for catastrophes
    prodigy: dict[tuple[str, int], float] = {}
    stops: dict[tuple[str, int, float], int] = {}
    for r in rows:
        key = (r["task"], int(r["seed"]))
        if r["arm"] == "prodigy":
            prodigy[key] = _raw(r)
        elif r["arm"] in ("plain", "aa") or r["variant"] == variant:
            loss[(*key, float(r["lr"]), r["arm"])] = float(r["effective_loss"])
            final[(*key, float(r["lr"]), r["arm"])] = _raw(r)
            if r["arm"] == "safe" and str(r["stopped_at"]) not in ("", "-1"):
                stops[(*key, float(r["lr"]))] = int(r["stopped_at"])
    out: dict[str, Any] = {}
    lrs = sorted({k[2] for k in loss})
    for lr in [*lrs, "all"]:
        keys = sorted(
            {k[:3] for k in loss if (lr == "all" or k[2] == lr) and (*k[:3], "safe") in loss and (*k[:3], "plain") in loss}
        )
        if not keys:
            continue
        logs = np.array([_log_ratio(loss[(*k, "safe")], loss[(*k, "plain")]) for k in keys])
        # the bootstrap resamples instances (task, seed) with all their runs at this lr (one each per lr)
        inst = sorted({k[:2] for k in keys})
        per_inst = np.array([np.mean([x for k, x in zip(keys, logs) if k[:2] == i]) for i in inst])
        geo, lo, hi = _geo(per_inst)
        worst_i = int(np.argmax(logs))
        judged = [k for k in keys if k[:2] in prodigy]
        cat = {arm: sum(final[(*k, arm)] >= CATASTROPHE * prodigy[k[:2]] for k in judged) for arm in ("plain", "safe")}
        out[str(lr)] = {
            "runs": len(keys),
            "instances": len(inst),
            "geo_ratio_safe_over_plain": geo,
            "ci95": [lo, hi],
            "median_ratio": float(np.exp(np.median(logs))),
            "worst_ratio": float(np.exp(logs[worst_i])),
            "worst_run": list(keys[worst_i]),
            "best_ratio": float(np.exp(logs.min())),
            "worse_by_5pct": float(np.mean(logs > math.log(WORSE))),
            "better_by_5pct": float(np.mean(logs < -math.log(WORSE))),
            "catastrophes_vs_prodigy": {"judged": len(judged), **cat},
            "ramp_stopped": sum(k in stops for k in keys),
        }
        aa_keys = [k for k in keys if (*k, "aa") in loss]
        if aa_keys:
            aa = np.array([_log_ratio(loss[(*k, "aa")], loss[(*k, "plain")]) for k in aa_keys])
            aa_inst = sorted({k[:2] for k in aa_keys})
            g, a_lo, a_hi = _geo(np.array([np.mean([x for k, x in zip(aa_keys, aa) if k[:2] == i]) for i in aa_inst]))
            out[str(lr)]["aa"] = {
                "runs": len(aa_keys),
                "geo_ratio_aa_over_plain": g,
                "ci95": [a_lo, a_hi],
                "median_ratio": float(np.exp(np.median(aa))),
                "worst_ratio": float(np.exp(aa.max())),
                "worse_by_5pct": float(np.mean(aa > math.log(WORSE))),
                "better_by_5pct": float(np.mean(aa < -math.log(WORSE))),
            }
    harm_keys = [str(lr) for lr in HARM_LRS if str(lr) in out]
    if harm_keys:
        runs = sum(out[k]["runs"] for k in harm_keys)
        out["harm_at_" + "_".join(harm_keys)] = {
            "runs": runs,
            "worse_by_5pct": sum(out[k]["worse_by_5pct"] * out[k]["runs"] for k in harm_keys) / runs,
        }
    return out


def _geo(per_instance_logs: np.ndarray) -> tuple[float, float, float]:
    """Geometric mean of per-instance mean log ratios and its 95% bootstrap interval over instances."""
    from chuck.evaluation.stats import bootstrap_ci

    geo = float(np.exp(per_instance_logs.mean()))
    lo, hi = bootstrap_ci(per_instance_logs, lambda x, axis: np.exp(np.mean(x, axis=axis)), geo)
    return geo, lo, hi


def _print(summary: dict[str, Any]) -> None:
    print(
        f"{'start lr':>8s} {'runs':>4s} {'geo safe/plain':>26s} {'median':>6s} {'worst':>7s} {'>5% worse':>9s} {'>5% better':>10s} {'cat plain':>9s} {'cat safe':>8s} {'stopped':>7s}"
    )
    for lr, s in summary.items():
        if lr.startswith("harm"):
            print(f"harm at {lr[8:]}: {s['worse_by_5pct']:.0%} of {s['runs']} runs more than 5% worse with the safe start")
            continue
        c = s["catastrophes_vs_prodigy"]
        print(
            f"{lr:>8s} {s['runs']:4d} {s['geo_ratio_safe_over_plain']:8.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}] "
            f"{s['median_ratio']:6.3f} {s['worst_ratio']:7.2f} {s['worse_by_5pct']:9.0%} {s['better_by_5pct']:10.0%} {c['plain']:9d} {c['safe']:8d} {s['ramp_stopped']:7d}"
        )
        if "aa" in s:
            a = s["aa"]
            print(
                f"{'  A/A':>8s} {a['runs']:4d} {a['geo_ratio_aa_over_plain']:8.3f} [{a['ci95'][0]:.3f}, {a['ci95'][1]:.3f}] "
                f"{a['median_ratio']:6.3f} {a['worst_ratio']:7.2f} {a['worse_by_5pct']:9.0%} {a['better_by_5pct']:10.0%}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="validation", help="a split name or comma-separated task ids")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--lrs", default=",".join(f"{x:g}" for x in LRS))
    ap.add_argument("--policy", default="default")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a SafeStartConfig field for the safe arm")
    ap.add_argument("--out", type=Path, required=True, help="path stem: writes STEM.csv (resumable) and STEM.json")
    ap.add_argument("--summary-only", action="store_true", help="summarize the CSV, train nothing")
    ap.add_argument("--aa", action="store_true", help="also the A/A arm: the plain arm with the lr moved by 0.1%%")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from chuck.core.safe_start import SafeStartConfig
    from chuck.zoo import list_tasks

    types = {f.name: f.type for f in fields(SafeStartConfig)}
    overrides: dict[str, Any] = {}
    for item in args.set:
        k, _, v = item.partition("=")
        if k not in types:
            ap.error(f"--set {item}: SafeStartConfig has no field {k!r}")
        overrides[k] = int(v) if k in ("window", "steps", "watch") else float(v)
    config = SafeStartConfig(**overrides)
    variant = ",".join(f"{k}={v:g}" for k, v in sorted(overrides.items())) or "default"
    tasks = list_tasks(args.tasks) if args.tasks in ("train", "validation", "test") else args.tasks.split(",")
    tasks = [t if isinstance(t, str) else t.id for t in tasks]
    seeds = [int(s) for s in args.seeds.split(",")]
    lrs = [float(x) for x in args.lrs.split(",")]

    csv_path, json_path = args.out.with_suffix(".csv"), args.out.with_suffix(".json")
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    if csv_path.exists():
        with csv_path.open() as f:
            rows = list(csv.DictReader(f))
    done = {(r["task"], int(r["seed"]), float(r["lr"]), r["arm"], r["variant"]) for r in rows}
    jobs = []
    for t in tasks:
        for s in seeds:
            jobs.append((t, s, 1.0, "prodigy", ""))
            arms = ("plain", "safe", "aa") if args.aa else ("plain", "safe")
            jobs += [(t, s, lr, arm, variant if arm == "safe" else "") for lr in lrs for arm in arms]
    todo = [j for j in jobs if j not in done]
    print(f"{len(jobs) - len(todo)} of {len(jobs)} runs in {csv_path}; {len(todo)} to go (safe arm: {variant})", flush=True)
    new = not csv_path.exists()
    t0 = time.perf_counter()
    if not args.summary_only:
        with csv_path.open("a", newline="") as f:
            w = csv.DictWriter(f, FIELDS)
            if new:
                w.writeheader()
            for i, (t, s, lr, arm, var) in enumerate(todo, 1):
                r = run(t, s, lr, arm, args.policy, config)
                r["variant"] = var
                w.writerow(r)
                f.flush()
                rows.append({k: str(v) for k, v in r.items()})
                eta = (time.perf_counter() - t0) / i * (len(todo) - i)
                print(
                    f"[{i}/{len(todo)}] {t} seed {s} lr {lr:g} {arm:7s} final {r['final_loss']:.4g}"
                    f"{' stopped at ' + str(r['stopped_at']) if r['stopped_at'] not in ('', -1) else ''}"
                    f"{' DIVERGED' if r['diverged'] else ''}{' ERROR ' + r['error'][:80] if r['error'] else ''} "
                    f"({r['seconds']:.1f}s, ~{eta / 60:.0f} min left)",
                    file=sys.stderr,
                    flush=True,
                )
    wanted = {(t, s) for t in tasks for s in seeds}
    rows = [r for r in rows if (r["task"], int(r["seed"])) in wanted and (r["arm"] == "prodigy" or float(r["lr"]) in lrs)]
    summary = summarize(rows, variant)
    _print(summary)
    others = sorted({r["variant"] for r in rows if r["arm"] == "safe"} - {variant})
    json_path.write_text(
        json.dumps(
            {
                "policy": args.policy,
                "tasks": tasks,
                "seeds": seeds,
                "lrs": lrs,
                "safe_start": asdict(config),
                "variant": variant,
                "torch": torch.__version__,
                "summary": summary,
                # every other safe-start variant the CSV holds (--set), on the same plain, A/A and Prodigy runs
                "variants": {v: summarize(rows, v) for v in others},
            },
            indent=1,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
