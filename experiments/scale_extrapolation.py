"""Extrapolate meta-training throughput to a Ray cluster from what one worker measured here.

Inputs (both produced by scripts in this folder):

* ``docs/results/vecenv_speed.json`` (``bench_vecenv.py``): the per-worker rollout rate ``r``
  of one Ray actor and of one in-process environment, and the learner's update cost per
  decision ``u``;
* ``docs/results/env_speed.json`` (``bench_env.py``): decisions per second of each zoo task,
  i.e. how unequal the tasks' decision times are.

Model: stable-baselines3 steps its environments in lockstep (every ``VecEnv.step`` waits for
all ``W`` of them), each on its own core. A step therefore costs the *slowest* of ``W``
decision times, plus the backend's transport ``o`` per step (Ray's cost over the in-process
environment at one worker), and the learner adds ``u`` per decision:

    throughput(W) = W / (E[max of W decision times] + o + W u)

with decision times drawn (the env samples tasks uniformly) from the tasks' measured times,
rescaled so that their mean is ``1 / r``. ``ideal`` is the same without stragglers (the mean
instead of the max). Monte Carlo, fixed seed.

    python experiments/scale_extrapolation.py --out docs/results/scale_extrapolation.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="1,2,4,8,16,32,64,128")
    ap.add_argument("--draws", type=int, default=20_000)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    speed = json.loads((RESULTS / "vecenv_speed.json").read_text())
    tasks = json.loads((RESULTS / "env_speed.json").read_text())["rows"]
    r = speed["per_worker_rollout_rate"]["ray"]
    u = speed["update_s_per_decision"]["ray"]
    o = max(0.0, 1.0 / r - 1.0 / speed["per_worker_rollout_rate"]["process"])  # transport per lockstep step
    tau = np.array([1.0 / t["decisions_per_s"] for t in tasks])
    tau *= (1.0 / r - o) / tau.mean()  # this machine's per-decision env time, the tasks' spread
    rng = np.random.default_rng(0)
    rows = []
    for w in (int(x) for x in args.workers.split(",")):
        slowest = tau[rng.integers(len(tau), size=(args.draws, w))].max(axis=1).mean()
        rows.append(
            {
                "workers": w,
                "decisions_per_s": w / (slowest + o + w * u),
                "ideal_decisions_per_s": w / (tau.mean() + o + w * u),
                "straggler_efficiency": tau.mean() / slowest,
            }
        )
    result = {
        "per_worker_rate": r,
        "transport_s_per_step": o,
        "update_s_per_decision": u,
        "learner_bound_decisions_per_s": 1.0 / u,
        "tasks": len(tau),
        "rows": rows,
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
