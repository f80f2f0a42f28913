"""What a policy loses when the training loop never gives chuck the loss (``opt.step()``).

The README's loop calls ``opt.step(loss=loss)``; the plainest PyTorch loop calls ``opt.step()``. Without
the loss chuck's loss monitors, its spike guardrail and every loss input of the policy read nothing.
This trains the same instances twice through the deployment path (``ChuckOptimizer``, the zoo's loop,
validation every 20 steps through ``observe``, the task's budget as ``total_steps``), once with the
loss and once with a loop that drops it, and prints the paired ratio of final validation losses
(blind / with the loss), overall and per family. One torch thread per worker.

    python experiments/loss_blind.py --tasks validation --seeds 0,1 --out docs/results/loss_blind.json

``--compare EARLIER.json`` reads another run's rows (its ``--out``, e.g. made at an earlier commit) instead
of training and prints the blind runs' paired ratio, this file's over the earlier one's, on the runs both hold:

    python experiments/loss_blind.py --compare docs/results/loss_blind_before.json --rows docs/results/loss_blind.json
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

LRS = (1e-4, 1e-3, 1e-2, 1e-1)


class _DropsTheLoss:
    """The plain loop's view of the optimizer: ``step()`` whatever the caller had."""

    def __init__(self, opt: Any) -> None:
        self._opt = opt

    def __getattr__(self, name: str) -> Any:
        return getattr(self._opt, name)

    def step(self, *args: Any, loss: Any = None, **kwargs: Any) -> Any:
        return self._opt.step()


def run(job: tuple[str, int, float, str, str]) -> dict[str, Any]:
    task_id, seed, lr, policy, mode = job
    import torch

    torch.set_num_threads(1)
    import chuck
    from chuck.evaluation.runs import EVAL_EVERY, instance_config, steps_for
    from chuck.zoo import get_task, loop

    task = get_task(task_id)
    cfg = instance_config(task, seed)
    cfg.lr = lr
    torch.manual_seed(cfg.seed)
    inst = task.build(cfg)
    steps = steps_for(task, 1.0)
    opt = chuck.ChuckOptimizer(inst.optimizer, policy=policy, model=inst.model, total_steps=steps, history=False)
    opt.advise = False  # blind on purpose
    res = loop.train(inst, opt if mode == "loss" else _DropsTheLoss(opt), steps, eval_every=EVAL_EVERY, observe=True)
    final = res.val_losses[-1] if res.val_steps and res.val_steps[-1] == steps else loop.evaluate(inst, opt)
    return {"task_id": task_id, "family": task.family, "seed": seed, "lr": lr, "mode": mode, "final_loss": final}


def _geo_ci(logs: list[float]) -> tuple[float, float, float]:
    """Geometric mean of exp(logs) and its 95% bootstrap interval (1000 resamples, seed 0)."""
    arr = np.array(logs)
    rng = np.random.default_rng(0)
    boot = [float(np.exp(rng.choice(arr, arr.size).mean())) for _ in range(1000)]
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return float(np.exp(arr.mean())), float(lo), float(hi)


def _log_ratio(later: float, earlier: float) -> float:
    """log(later / earlier); a diverged run counts as 100x worse than the other, two as level."""
    if math.isfinite(later) and math.isfinite(earlier):
        return math.log(max(later, 1e-12) / max(earlier, 1e-12))
    return math.log(100.0) * (int(not math.isfinite(later)) - int(not math.isfinite(earlier)))


def compare(earlier: Path, later: Path) -> None:
    def blind(path: Path) -> dict[tuple[str, int, float], float]:
        rows = json.loads(path.read_text())["rows"]
        return {(r["task_id"], r["seed"], r["lr"]): r["final_loss"] for r in rows if r["mode"] == "blind"}

    a, b = blind(earlier), blind(later)
    both = sorted(set(a) & set(b))
    logs = [_log_ratio(b[k], a[k]) for k in both]
    g, lo, hi = _geo_ci(logs)
    better = sum(x < -math.log(1.05) for x in logs)
    worse = sum(x > math.log(1.05) for x in logs)
    print(
        f"blind runs, {later} / {earlier}: geo-mean {g:.3f} [{lo:.3f}, {hi:.3f}] over {len(both)} runs; better by > 5% in {better}, worse in {worse}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="validation")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--policy", default="default")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--compare", type=Path, help="an earlier --out JSON: compare its blind runs with --rows' (no training)")
    ap.add_argument("--rows", type=Path, help="with --compare: the later --out JSON")
    args = ap.parse_args()
    if args.compare:
        if not args.rows:
            ap.error("--compare needs --rows (the later run's JSON)")
        compare(args.compare, args.rows)
        return
    from chuck.evaluation.runner import resolve_task_spec

    tasks = [t.id for t in resolve_task_spec(args.tasks)]
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs = [(t, s, lr, args.policy, m) for t in tasks for s in seeds for lr in LRS for m in ("loss", "blind")]
    with ProcessPoolExecutor(args.workers) as pool:
        rows = list(pool.map(run, jobs))
    final = {(r["task_id"], r["seed"], r["lr"], r["mode"]): r["final_loss"] for r in rows}
    logs, by_family = [], defaultdict(list)
    for r in rows:
        if r["mode"] != "loss":
            continue
        x = _log_ratio(final[(r["task_id"], r["seed"], r["lr"], "blind")], r["final_loss"])
        logs.append(x)
        by_family[r["family"]].append(x)
    arr = np.array(logs)
    geo, lo, hi = _geo_ci(logs)
    summary = {
        "runs": int(arr.size),
        "geo_ratio_blind_over_loss": geo,
        "ci95": [lo, hi],
        "blind_worse_by_5pct": int((arr > math.log(1.05)).sum()),
        "blind_better_by_5pct": int((arr < -math.log(1.05)).sum()),
        "per_family": {f: float(np.exp(np.mean(v))) for f, v in sorted(by_family.items())},
    }
    print(
        f"{args.policy} on {args.tasks} (seeds {args.seeds}, lrs {LRS}): final loss blind / with the loss, geo-mean "
        f"{summary['geo_ratio_blind_over_loss']:.3f} [{lo:.3f}, {hi:.3f}] over {arr.size} runs; worse by > 5% in "
        f"{summary['blind_worse_by_5pct']}, better in {summary['blind_better_by_5pct']}"
    )
    for f, g in summary["per_family"].items():
        print(f"  {f:32s} {g:.3f}")
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
