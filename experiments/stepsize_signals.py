"""Do the step-size features tell "too low" from "too high"? (policy issue, lever 1)

For each task, one fixed instance is trained with AdamW at its calibrated best constant lr
times 10^k (k in -2..+1.5) under the constant policy (chuck watches, changes nothing); the
step.* and weights.* features at every decision are averaged over the run. A feature that
moves monotonically with k, in the same direction on every task, separates the regimes
without knowing the task.

    python experiments/stepsize_signals.py --tasks train --out docs/results/stepsize_signals.csv
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

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


def run(task_id: str, offset: float, seed: int = 0) -> dict[str, float]:
    task = zoo.get_task(task_id)
    cfg = task.sample_config(np.random.default_rng(seed))
    cfg.optimizer, cfg.lr = "AdamW", task.best_lr * 10.0**offset
    torch.manual_seed(cfg.seed)
    inst = task.build(cfg)
    opt = chuck.ChuckOptimizer(inst.optimizer, "constant", model=inst.model, total_steps=task.budget, history=False)
    out = train(inst, opt, task.budget, eval_every=20)
    rows = [d.observation for d in opt.decisions if d.source != "guardrail"]
    first, final = out.val_losses[0], out.val_losses[-1]
    res = {f: float(np.mean([r[f] for r in rows])) if rows else math.nan for f in FEATURES}
    res.update(task=task_id, offset=offset, lr=cfg.lr, final_over_first=final / first if first > 0 else math.nan)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="train")
    ap.add_argument("--out", default="docs/results/stepsize_signals.csv")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for task in zoo.resolve_tasks(args.tasks):
        for k in OFFSETS:
            r = run(task.id, k)
            rows.append(r)
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
    for k in OFFSETS:
        sel = [r for r in rows if r["offset"] == k]
        print(f"  x10^{k:+.1f}: " + "  ".join(f"{f}={np.nanmean([r[f] for r in sel]):+.2f}" for f in FEATURES))


if __name__ == "__main__":
    main()
