"""Cold start measurements (figures in docs/results.md).

1. Warm vs cold tuning. For each zoo task, a history is built from studies on
   *other* instances (seeds 1 and 2) of the same family; then, on instance 0, a
   cold study (TPE from scratch) and a warm-started one (the history's nearest
   runs enqueued first) run the same number of trials. Reported: the trial at
   which the cold study reached its best loss, the first trial at which the warm
   study reached that loss (within 1%), and their ratio (warm / cold; < 1 = fewer
   trials). A warm study that never gets there counts as all its trials.

2. Epsilon range. For each task (AdamW at a sane lr), a short ChuckOptimizer run
   yields the histogram's epsilon range [10^p10, 10^p90] of |g| (Silva & Rodriguez
   2024). A wide grid search over eps in 1e-12..1 (one value per decade) finds the
   best eps; reported: how often it lies in the range, and how often the best eps
   *inside* the range is within 1% of the global best (whether searching only the
   range loses anything).

    python experiments/bench_coldstart.py                # -> docs/results/coldstart.json
    python experiments/bench_coldstart.py --trials 10 --tasks tabular.wine_mlp
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TASKS = "tabular.wine_mlp,tabular.breast_cancer_mlp,tabular.diabetes_regression,cv.digits_mlp,nlp.topic_classification,tabular.friedman_regression"


def first_reaching(values: list[float], target: float) -> int:
    for i, v in enumerate(values):
        if v <= target * 1.01:
            return i + 1
    return len(values)


def warm_vs_cold(task_id: str, trials: int, steps: int) -> dict:
    import optuna

    from chuck.tuning.cold_start import tune, zoo_train_fn

    storage = f"sqlite:///{Path(os.environ['CHUCK_HOME']) / 'optuna.db'}"
    for seed in (1, 2):  # the history: tuned runs of other instances of the family
        fn, model = zoo_train_fn(task_id, seed=seed, steps=steps)
        tune(
            fn,
            n_trials=trials,
            model=model,
            storage=storage,
            study_name=f"{task_id}-hist{seed}",
            tracking=False,
            warm_start=False,
            seed=seed,
        )
    fn, model = zoo_train_fn(task_id, seed=0, steps=steps)
    out = {}
    for mode in ("cold", "warm"):
        res = tune(
            fn,
            n_trials=trials,
            model=model,
            storage=storage,
            study_name=f"{task_id}-{mode}",
            tracking=False,
            warm_start=(mode == "warm"),
            history=False,
            seed=0,
        )
        study = optuna.load_study(study_name=f"{task_id}-{mode}", storage=storage)
        vals = [t.value if t.value is not None else math.inf for t in study.trials]
        out[mode] = {"values": vals, "best": res.best_value, "enqueued": len(res.enqueued)}
    cold_best = out["cold"]["best"]
    cold_at = first_reaching(out["cold"]["values"], cold_best)
    warm_at = first_reaching(out["warm"]["values"], cold_best)
    return {
        "task": task_id,
        "cold_best": cold_best,
        "warm_best": out["warm"]["best"],
        "cold_trials_to_best": cold_at,
        "warm_trials_to_cold_best": warm_at,
        "ratio": warm_at / cold_at,
        "warm_enqueued": out["warm"]["enqueued"],
    }


def eps_check(task_id: str, steps: int) -> dict:
    import chuck
    from chuck import zoo
    from chuck.tuning.cold_start import eps_range_from
    from chuck.zoo.loop import train as run

    task = zoo.get_task(task_id)
    cfg = task.sample_config(np.random.default_rng(0))
    cfg.optimizer, cfg.lr, cfg.label_noise = "AdamW", 1e-3, 0.0

    def train(eps: float | None, probe: bool = False):
        torch.manual_seed(cfg.seed)
        inst = task.build(cfg)
        if eps is not None:
            for g in inst.optimizer.param_groups:
                g["eps"] = eps
        opt = chuck.ChuckOptimizer(inst.optimizer, "constant", model=inst.model, history=False, interval=20)
        run(inst, opt, 40 if probe else steps)
        return opt if probe else inst.evaluate()

    lo, hi = eps_range_from(train(None, probe=True))
    grid = [10.0**e for e in range(-12, 1)]
    losses = {eps: train(eps) for eps in grid}
    finite = {e: v for e, v in losses.items() if math.isfinite(v)}
    best = min(finite, key=finite.get)
    inside = {e: v for e, v in finite.items() if lo <= e <= hi}
    best_inside = min(inside.values()) if inside else math.inf
    return {
        "task": task_id,
        "range": [lo, hi],
        "best_eps": best,
        "best_loss": finite[best],
        "best_in_range": bool(lo <= best <= hi),
        "range_best_within_1pct": bool(best_inside <= finite[best] * 1.01),
        "losses": {f"{e:.0e}": v for e, v in losses.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default=DEFAULT_TASKS)
    ap.add_argument("--trials", type=int, default=15)
    ap.add_argument("--steps", type=int, default=100, help="training steps per trial")
    ap.add_argument("--json", default=str(ROOT / "docs" / "results" / "coldstart.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.environ["CHUCK_HOME"] = tempfile.mkdtemp(prefix="chuck-coldstart-")  # a fresh, private history
    tasks = args.tasks.split(",")
    warm = []
    for t in tasks:
        warm.append(warm_vs_cold(t, args.trials, args.steps))
        r = warm[-1]
        print(
            f"{t:30s} cold best {r['cold_best']:.4f} at trial {r['cold_trials_to_best']:2d}; warm reaches it at "
            f"trial {r['warm_trials_to_cold_best']:2d} (ratio {r['ratio']:.2f}; {r['warm_enqueued']} enqueued)",
            flush=True,
        )
    eps = []
    for t in tasks:
        eps.append(eps_check(t, args.steps))
        r = eps[-1]
        print(
            f"{t:30s} eps range [{r['range'][0]:.1e}, {r['range'][1]:.1e}]  best eps {r['best_eps']:.0e}  "
            f"in range: {r['best_in_range']}  range best within 1%: {r['range_best_within_1pct']}",
            flush=True,
        )
    ratios = [r["ratio"] for r in warm]
    summary = {
        "tasks": len(tasks),
        "trials_per_study": args.trials,
        "steps_per_trial": args.steps,
        "geomean_trials_ratio_warm_over_cold": float(np.exp(np.mean(np.log(ratios)))),
        "median_trials_ratio": float(np.median(ratios)),
        "warm_faster_or_equal": float(np.mean([r <= 1.0 for r in ratios])),
        "eps_best_in_histogram_range": float(np.mean([r["best_in_range"] for r in eps])),
        "eps_range_best_within_1pct_of_global": float(np.mean([r["range_best_within_1pct"] for r in eps])),
    }
    print(json.dumps(summary, indent=2))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"summary": summary, "warm_vs_cold": warm, "eps": eps}, indent=2, default=float))


if __name__ == "__main__":
    main()
