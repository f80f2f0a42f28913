"""Speed of the meta-environment against the bare training loop of the same task.

For each task, the same instance (same seed and sampled config) is trained
(a) through ``TrainingControlEnv`` with a hold action every decision and
(b) by a bare loop: ``train_step(); base_opt.step(); zero_grad()`` with the
same evaluation every ``interval`` steps (the env evaluates for its reward; a
bare run evaluates too), and (c) the bare loop without evaluation. Arms are
interleaved per repetition in one process. Prints decisions/s, inner steps/s
and the time ratios env/bare.

    python experiments/bench_env.py                 # every zoo family, 3 repetitions
    python experiments/bench_env.py --tasks cv.digits_mlp --reps 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from chuck import zoo
from chuck.envs import TrainingControlEnv
from chuck.zoo.loop import train


def bare(task, config, budget: int, interval: int, evaluate: bool) -> float:
    torch.manual_seed(config.seed)
    inst = task.build(config)
    t0 = time.perf_counter()
    inst.evaluate()
    train(inst, inst.optimizer, budget, eval_every=interval if evaluate else None)
    return time.perf_counter() - t0


def through_env(task_id: str, seed: int, interval: int) -> tuple[float, int, int, object]:
    env = TrainingControlEnv(tasks=task_id, interval=interval)
    t0 = time.perf_counter()
    env.reset(seed=seed)
    done, decisions = False, 0
    hold = np.zeros(4, dtype=np.float32)
    while not done:
        _, _, done, _, _ = env.step(hold)
        decisions += 1
    dt = time.perf_counter() - t0
    steps, config = env.opt.step_count, env.config
    env.close()
    return dt, decisions, steps, config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="train,validation,test")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--interval", type=int, default=20)
    ap.add_argument("--json", help="write the table here")
    args = ap.parse_args()
    torch.set_num_threads(1)  # "on one core", as the target says
    rows = []
    for task in zoo.resolve_tasks(args.tasks):
        through_env(task.id, 999, args.interval)  # warm-up: imports and data caches are first-use costs
        env_t, bare_t, bare_noeval_t = [], [], []
        for rep in range(args.reps):
            _, decisions, steps, config = through_env(task.id, rep, args.interval)  # config of this rep
            arms = ["env", "bare", "bare_noeval"]
            for arm in arms[rep % 3 :] + arms[: rep % 3]:  # rotate the order: no arm always goes first
                if arm == "env":
                    env_t.append(through_env(task.id, rep, args.interval)[0])
                else:
                    sink = bare_t if arm == "bare" else bare_noeval_t
                    sink.append(bare(task, config, steps, args.interval, evaluate=arm == "bare"))
        e, b, bn = statistics.median(env_t), statistics.median(bare_t), statistics.median(bare_noeval_t)
        rows.append(
            {
                "task": task.id,
                "episode_s": round(e, 3),
                "decisions_per_s": round(decisions / e, 2),
                "inner_steps_per_s": round(steps / e, 1),
                "bare_steps_per_s": round(steps / b, 1),
                "ratio_vs_bare_with_eval": round(e / b, 3),
                "ratio_vs_bare_train_only": round(e / bn, 3),
            }
        )
        r = rows[-1]
        print(
            f"{task.id:30s} episode {e:6.2f}s  {r['decisions_per_s']:6.1f} dec/s  {r['inner_steps_per_s']:7.1f} steps/s  "
            f"env/bare(eval) {r['ratio_vs_bare_with_eval']:.3f}  env/bare(train only) {r['ratio_vs_bare_train_only']:.3f}",
            flush=True,
        )
    tot_e = sum(r["episode_s"] for r in rows)
    geo = float(np.exp(np.mean([np.log(r["ratio_vs_bare_with_eval"]) for r in rows])))
    geo_n = float(np.exp(np.mean([np.log(r["ratio_vs_bare_train_only"]) for r in rows])))
    summary = {
        "tasks": len(rows),
        "total_episode_s": round(tot_e, 2),
        "geomean_ratio_vs_bare_with_eval": round(geo, 3),
        "geomean_ratio_vs_bare_train_only": round(geo_n, 3),
        "target": "<= 1.10 vs the bare loop",
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "summary": summary}, f, indent=2)


if __name__ == "__main__":
    main()
