"""Do the step-size features tell "too low" from "too high"? (policy issue, lever 1)

For each task, one fixed instance is trained with AdamW at its calibrated best constant lr
times 10^k (k in -2..+1.5) under the constant policy (chuck watches, changes nothing); the
step.* and weights.* features at every decision are averaged over the run. A feature that
moves monotonically with k, in the same direction on every task, separates the regimes
without knowing the task.

    python -m experiments.stepsize_signals --tasks train --out docs/results/stepsize_signals.csv

With ``--per-decision PATH`` every decision's features are also written (one row per decision)
and the script prints, per offset, how often the prior's per-decision rules would fire: a
cosine above RAISE_AT (once, and at two decisions in a row: prior version 8) and the distance
guard (prior versions 5 and 6). Those shares are the figures behind experiments/prior_variants.py
and docs/design/step-size-prior.md:

    python -m experiments.stepsize_signals --tasks train --offsets=-1.5,-1,-0.5,0,0.5,1 \
        --out /tmp/signals.csv --per-decision docs/results/stepsize_decisions.csv
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

import chuck
from chuck import zoo
from chuck.zoo.loop import train

FEATURES = (
    "step.log10_update_over_dhat",
    "step.hypergrad",
    "step.dhat_growth",
    "weights.update_ratio_log10",
    "weights.update_cosine",
    "loss.log_slope",
    "loss.noise_to_progress",
)
OFFSETS = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5)


def run(task_id: str, offset: float, seed: int = 0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    task = zoo.get_task(task_id)
    cfg = task.sample_config(np.random.default_rng(seed))
    cfg.optimizer, cfg.lr = "AdamW", task.best_lr * 10.0**offset
    torch.manual_seed(cfg.seed)
    inst = task.build(cfg)
    opt = chuck.ChuckOptimizer(inst.optimizer, "constant", model=inst.model, total_steps=task.budget, history=False)
    out = train(inst, opt, task.budget, eval_every=20)
    rows = [d.observation for d in opt.decisions if d.source != "guardrail"]
    first, final = out.val_losses[0], out.val_losses[-1]
    res: dict[str, Any] = {f: float(np.mean([r[f] for r in rows])) if rows else math.nan for f in FEATURES}
    res.update(task=task_id, offset=offset, lr=cfg.lr, final_over_first=final / first if first > 0 else math.nan)
    per = [
        {"task": task_id, "offset": offset, "decision": i, **{f: float(r.get(f, math.nan)) for f in FEATURES}}
        for i, r in enumerate(rows)
    ]
    return res, per


def rule_shares(per: list[dict[str, Any]], first: int | None = None) -> None:
    """Print, per offset, how often the prior's per-decision rules fire (in the first ``first`` decisions
    of each run; all of them when None)."""
    from experiments.prior_variants import DIST_HIGH, HOLD_BELOW, NO_BOUND, RAISE_AT

    first = first or 10**9
    print(f"per offset, share of decisions ({'all' if first == 10**9 else f'first {first}'} of each run) where a rule fires:")
    for k in sorted({r["offset"] for r in per}):
        runs: dict[str, list[dict[str, Any]]] = {}
        for r in per:
            if r["offset"] == k and r["decision"] < first:
                runs.setdefault(str(r["task"]), []).append(r)
        dec = [r for rs in runs.values() for r in rs]
        h = [r["step.hypergrad"] for r in dec]
        twice = [
            a["step.hypergrad"] > RAISE_AT and b["step.hypergrad"] > RAISE_AT for rs in runs.values() for a, b in zip(rs, rs[1:])
        ]
        ratio = [r["step.log10_update_over_dhat"] for r in dec]
        guard = [x > DIST_HIGH and y < HOLD_BELOW for x, y in zip(ratio, h)]
        finite = [x > DIST_HIGH and x < NO_BOUND and y < HOLD_BELOW for x, y in zip(ratio, h)]
        print(
            f"  x10^{k:+.1f}: cosine > RAISE_AT {np.mean([x > RAISE_AT for x in h]):.0%}"
            + (f", twice in a row {np.mean(twice):.0%}; " if twice else "; ")
            + f"distance guard {np.mean(guard):.0%} (finite bound only {np.mean(finite):.0%})"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="train")
    ap.add_argument("--out", default="docs/results/stepsize_signals.csv")
    ap.add_argument("--offsets", default=",".join(str(k) for k in OFFSETS), help="log10 offsets from each task's best lr")
    ap.add_argument("--per-decision", default=None, help="also write every decision's features here (CSV)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    offsets = [float(k) for k in args.offsets.split(",")]
    rows, per = [], []
    for task in zoo.resolve_tasks(args.tasks):
        for k in offsets:
            r, p = run(task.id, k)
            rows.append(r)
            per.extend(p)
            print(
                f"{task.id:32s} lr x10^{k:+.1f}  " + "  ".join(f"{f.split('.')[-1][:14]}={r[f]:+.2f}" for f in FEATURES[:3]),
                flush=True,
            )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print("per offset, mean over tasks:")
    for k in offsets:
        sel = [r for r in rows if r["offset"] == k]
        print(f"  x10^{k:+.1f}: " + "  ".join(f"{f}={np.nanmean([r[f] for r in sel]):+.2f}" for f in FEATURES))
    if args.per_decision:
        Path(args.per_decision).parent.mkdir(parents=True, exist_ok=True)
        with open(args.per_decision, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(per[0]))
            w.writeheader()
            w.writerows(per)
        rule_shares(per)
        rule_shares(per, first=8)
        rule_shares(per, first=1)


if __name__ == "__main__":
    main()
