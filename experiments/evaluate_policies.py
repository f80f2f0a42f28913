"""Evaluate chuck's policies against the optimizers users would pick instead.

On the held-out zoo families (never seen in meta-training), for several sampled
instances per family and initial learning rates across four decades, every arm
trains the same instance (same data, init and batch order) for the family's
budget:

  adamw            AdamW, constant lr
  adamw_cosine     AdamW + CosineAnnealingLR over the budget
  plateau          AdamW + ReduceLROnPlateau(factor 0.5, patience 2) on the validation loss
  schedulefree     schedule-free AdamW (Defazio et al. 2024; package schedulefree), warm-up 5%
  prodigy_cosine   Prodigy (Mishchenko & Defazio 2024; package prodigyopt), lr=1 (as recommended),
                   + cosine; being learning-rate free it ignores the initial lr
  chuck_heuristic  ChuckOptimizer(AdamW, "heuristic")
  chuck_default    ChuckOptimizer(AdamW, "default"): the shipped learned policy

Every arm evaluates the validation loss every ``interval`` steps (ReduceLROnPlateau
and chuck receive it). Metric: the final validation loss relative to the best arm on
that instance (task, seed, initial lr): 1.0 = best. A run whose final loss is
non-finite counts as 3 x max(initial loss, loss reference) (the meta-env's
divergence threshold). Reported per arm: median, geometric mean, and fraction
within 10% of the best, overall and per initial lr.

    python experiments/evaluate_policies.py                       # full table -> docs/results/
    python experiments/evaluate_policies.py --seeds 1 --lrs 1e-3  # quick look
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

ARMS = ("adamw", "adamw_cosine", "plateau", "schedulefree", "prodigy_cosine", "chuck_heuristic", "chuck_default")
ROOT = Path(__file__).resolve().parents[1]


def run_arm(job: tuple[str, int, float, str, int]) -> dict:
    task_id, seed, lr, arm, interval = job
    torch.set_num_threads(1)
    import chuck
    from chuck import zoo

    task = zoo.get_task(task_id)
    cfg = task.sample_config(np.random.default_rng(seed))
    cfg.optimizer, cfg.lr = "AdamW", lr
    torch.manual_seed(cfg.seed)
    inst = task.build(cfg)
    budget = task.budget
    params = list(inst.model.parameters())
    opt, sched, plateau, sf, wrapped = inst.optimizer, None, None, False, False
    if arm == "adamw_cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=budget)
    elif arm == "plateau":
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=2)
    elif arm == "schedulefree":
        import schedulefree

        opt = schedulefree.AdamWScheduleFree(params, lr=lr, weight_decay=cfg.weight_decay, warmup_steps=max(1, budget // 20))
        opt.train()
        sf = True
    elif arm == "prodigy_cosine":
        from prodigyopt import Prodigy

        opt = Prodigy(params, lr=1.0, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=budget)
    elif arm in ("chuck_heuristic", "chuck_default"):
        opt = chuck.ChuckOptimizer(opt, arm.split("_", 1)[1], model=inst.model, total_steps=budget, interval=interval)
        wrapped = True

    def evaluate() -> float:
        if sf:
            opt.eval()
        v = inst.evaluate()
        if sf:
            opt.train()
        return v

    l_init = evaluate()
    t0 = time.perf_counter()
    for step in range(1, budget + 1):
        loss = inst.train_step()
        if wrapped:
            opt.step(loss=loss)
        else:
            opt.step()
        opt.zero_grad()
        if sched is not None:
            sched.step()
        if step % interval == 0:
            v = evaluate()
            if plateau is not None and math.isfinite(v):
                plateau.step(v)
            if wrapped:
                opt.observe(val_loss=v)
    final = evaluate()
    cap = 3.0 * max(l_init, inst.loss_reference)
    diverged = not math.isfinite(final) or final > cap
    return {
        "task_id": task_id, "seed": seed, "initial_lr": lr, "arm": arm, "initial_loss": l_init,
        "final_loss": min(final, cap) if math.isfinite(final) else cap, "diverged": diverged,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def summarize(rows: list[dict]) -> tuple[list[dict], dict[float, dict[str, float]]]:
    best: dict[tuple, float] = {}
    for r in rows:
        key = (r["task_id"], r["seed"], r["initial_lr"])
        best[key] = min(best.get(key, math.inf), r["final_loss"])
    for r in rows:
        r["regret"] = r["final_loss"] / max(best[(r["task_id"], r["seed"], r["initial_lr"])], 1e-12)
    table = []
    for arm in ARMS:
        reg = np.array([r["regret"] for r in rows if r["arm"] == arm])
        if reg.size:
            table.append({"arm": arm, "runs": int(reg.size), "median": float(np.median(reg)),
                          "geomean": float(np.exp(np.mean(np.log(reg)))), "within_10pct": float(np.mean(reg <= 1.1)),
                          "diverged": float(np.mean([r["diverged"] for r in rows if r["arm"] == arm]))})
    per_lr: dict[float, dict[str, float]] = {}
    for lr in sorted({r["initial_lr"] for r in rows}):
        per_lr[lr] = {arm: float(np.exp(np.mean(np.log([r["regret"] for r in rows if r["arm"] == arm and r["initial_lr"] == lr]))))
                      for arm in ARMS if any(r["arm"] == arm and r["initial_lr"] == lr for r in rows)}
    return table, per_lr


def write_outputs(rows: list[dict], table: list[dict], per_lr: dict, out: Path, meta: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "policy_eval.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = [f"<!-- generated by experiments/evaluate_policies.py: {meta} -->", "",
             "| arm | runs | median regret | geomean regret | within 10% of best | diverged |", "|---|---|---|---|---|---|"]
    for t in table:
        lines.append(f"| {t['arm']} | {t['runs']} | {t['median']:.3f} | {t['geomean']:.3f} | {t['within_10pct']:.0%} | {t['diverged']:.0%} |")
    lines += ["", "Geometric-mean regret by initial learning rate:", "",
              "| initial lr | " + " | ".join(ARMS) + " |", "|---|" + "---|" * len(ARMS)]
    for lr, d in per_lr.items():
        lines.append(f"| {lr:g} | " + " | ".join(f"{d.get(a, float('nan')):.3f}" for a in ARMS) + " |")
    (out / "policy_eval.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        lrs = list(per_lr)
        for arm in ARMS:
            ax.plot(lrs, [per_lr[lr].get(arm, np.nan) for lr in lrs], marker="o", label=arm,
                    lw=2.5 if arm.startswith("chuck") else 1.2)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("initial learning rate")
        ax.set_ylabel("geomean final val loss / best arm")
        ax.set_title("Held-out families: regret by starting lr (lower is better)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "policy_eval.png", dpi=130)
        plt.close(fig)
    except ImportError:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="heldout")
    ap.add_argument("--seeds", type=int, default=2, help="sampled instances per family")
    ap.add_argument("--lrs", default="1e-5,1e-4,1e-3,1e-2,1e-1")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--interval", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "docs" / "results"))
    args = ap.parse_args()
    from chuck import zoo

    tasks = [t.id for t in zoo.resolve_tasks(args.tasks)]
    lrs = [float(x) for x in args.lrs.split(",")]
    arms = args.arms.split(",")
    jobs = [(t, s, lr, a, args.interval) for t in tasks for s in range(args.seeds) for lr in lrs for a in arms]
    from tqdm.auto import tqdm

    with get_context("spawn").Pool(args.workers) as pool:
        rows = list(tqdm(pool.imap_unordered(run_arm, jobs), total=len(jobs), desc="evaluation runs"))
    rows.sort(key=lambda r: (r["task_id"], r["seed"], r["initial_lr"], ARMS.index(r["arm"])))
    table, per_lr = summarize(rows)
    meta = f"tasks={args.tasks} seeds={args.seeds} lrs={args.lrs} interval={args.interval}"
    write_outputs(rows, table, per_lr, Path(args.out), meta)
    print((Path(args.out) / "policy_eval.md").read_text())


if __name__ == "__main__":
    main()
