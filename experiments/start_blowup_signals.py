"""What a blow-up in a run's first steps looks like, against a healthy start: the signals a restart rule reads.

For each family of a split and each starting lr from a decade below to three decades above the family's
best constant lr (per base optimizer), trains the bare base optimizer at a constant lr after the shipped
policy's linear warm-up (``--warmup``: the 20 steps of ``prior@10``) and records, over the
first WINDOW steps: the step at which ``chuck.core.restart``'s blow-up test (the shipped settings, fed
every finite loss as the optimizer would) would have restarted the run (-1: never), the rise of the median of
the last 5 losses over the median of the first 5 at step WINDOW, the ratio of the median of the last 5
gradient norms to the first, and whether a loss or gradient norm went non-finite; then the final validation
loss of the whole run (which never restarts: the test only watches). A restart rule must fire on the starts
that end far above the best and never on those that end near it.

    python experiments/start_blowup_signals.py --split train --base AdamW,SGD --out docs/results/start_blowup_signals.csv
"""

from __future__ import annotations

import argparse
import csv
import math
from multiprocessing import Pool
from statistics import median

import torch

from chuck.core.guardrails import GuardrailConfig
from chuck.core.restart import StartGuard
from chuck.evaluation.runs import init_worker, instance_config, steps_for
from chuck.zoo import get_task, list_tasks
from chuck.zoo.starting_lr import OPTIMIZER_LR_OFFSET

WINDOW = GuardrailConfig().restart_window
#: The shipped default's warm-up (``chuck.policies.prior.WARMUP``): what a restart rule under it sees.
WARMUP = 20
DECADES = (-1.0, 0.0, 1.0, 2.0, 3.0)


def one(job: tuple[str, int, str, float, int]) -> dict:
    task_id, seed, base, decade, warmup = job
    task = get_task(task_id)
    cfg = instance_config(task, seed, base)
    best = task.best_lr * 10 ** OPTIMIZER_LR_OFFSET[base]
    cfg.lr = best * 10**decade
    torch.manual_seed(cfg.seed)
    inst = task.build(cfg)
    steps = steps_for(task, 1.0)
    losses, norms, nonfinite, restart_at = [], [], False, -1
    cfg_g = GuardrailConfig()
    guard = StartGuard(cfg_g.restart_window, cfg_g.restart_rise, cfg_g.max_restarts)
    guard.begin(list(inst.model.parameters()), inst.optimizer, [])
    final = math.nan
    try:
        for k in range(steps):
            for group in inst.optimizer.param_groups:
                group["lr"] = cfg.lr * min(1.0, (k + 1) / warmup) if warmup > 0 else cfg.lr
            loss = inst.train_step()
            params = [p for g in inst.optimizer.param_groups for p in g["params"] if p.grad is not None]
            gn = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params])))
            lv = float(loss)
            if restart_at < 0 and guard.check(lv, gn) is not None:
                restart_at = k
            guard.updated()
            if k < WINDOW:
                losses.append(lv)
                norms.append(gn)
                nonfinite |= not (math.isfinite(lv) and math.isfinite(gn))
            inst.optimizer.step()
            inst.optimizer.zero_grad(set_to_none=True)
        final = float(inst.evaluate())
    except Exception:  # noqa: BLE001 - a crashed run is a blow-up
        nonfinite = True
    l0, g0 = losses[0] if losses else math.nan, norms[0] if norms else math.nan
    return {
        "task": task_id,
        "restart_at": restart_at,
        "seed": seed,
        "base": base,
        "decade": decade,
        "lr": cfg.lr,
        "loss_rise": (median(losses[-5:]) - median(losses[:5])) / max(abs(median(losses[:5])), 1e-12)
        if len(losses) >= 5
        else math.nan,
        "grad_rise": median(norms[-5:]) / max(g0, 1e-12) if len(norms) >= 5 else math.nan,
        "nonfinite": nonfinite,
        "final": final,
        "initial": l0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", default="train")
    ap.add_argument("--base", default="AdamW,SGD")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=WARMUP, help="linear warm-up steps (0: none; default: %(default)s)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    jobs = [
        (t, int(s), b, d, args.warmup)
        for t in list_tasks(args.split)
        for s in args.seeds.split(",")
        for b in args.base.split(",")
        for d in DECADES
    ]
    with Pool(args.workers, initializer=init_worker) as pool:
        rows = list(pool.imap_unordered(one, jobs))
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(sorted(rows, key=lambda r: (r["task"], r["base"], r["decade"])))
    print(f"{len(rows)} runs -> {args.out}")


if __name__ == "__main__":
    main()
