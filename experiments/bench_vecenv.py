"""Decisions per second of meta-training: the multiprocess backend vs the Ray backend, 1, 2 and 4 env workers.

For each backend and worker count, the vectorized environments ``chuck train-policy`` builds
(``chuck.metatrain.train._vec_env``: ``DummyVecEnv`` for one process worker, ``SubprocVecEnv`` for
more; ``RayVecEnv`` with one CPU per actor on a local Ray runtime) run PPO (the
``train-policy`` defaults but ``n_steps``) for ``--timesteps`` decisions after a warm-up
rollout. All configurations are built first and measured in interleaved rounds, so that the
load of a shared machine hits them alike. Reported per configuration:

* ``decisions_per_s``: PPO timesteps per second of ``learn`` (rollouts and updates), the
  figure meta-training runs at;
* ``rollout_decisions_per_s``: the same counting rollout time only (environment stepping,
  policy inference, the backend's transport);
* ``update_s_per_decision``: the learner's update cost per decision (PPO epochs over the buffer).

The extrapolation in docs/scale.md uses the per-worker rollout rate ``r`` (one worker) and
``u``: W workers on W cores give about ``1 / (1 / (W r) + u)`` decisions per second, until
stragglers (every SB3 step waits for the slowest environment) and the driver's per-step
inference and transport become the limit.

    python experiments/bench_vecenv.py --out docs/results/vecenv_speed.json   # about 20 minutes on 2 cores
    python experiments/bench_vecenv.py --timesteps 256 --workers 1,2           # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch


class _Timer:
    """Splits PPO.learn wall time into rollouts and updates (SB3 callback hooks mark the boundaries)."""

    def __init__(self) -> None:
        self.rollout = 0.0
        self._t0 = 0.0

    def callback(self):
        from stable_baselines3.common.callbacks import BaseCallback

        timer = self

        class Mark(BaseCallback):
            def _on_rollout_start(self) -> None:
                timer._t0 = time.perf_counter()

            def _on_rollout_end(self) -> None:
                timer.rollout += time.perf_counter() - timer._t0

            def _on_step(self) -> bool:
                return True

        return Mark()


def build(backend: str, workers: int, args: argparse.Namespace) -> dict:
    """One configuration: its vectorized environments (as ``chuck train-policy`` builds them) and a PPO learner."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecMonitor, VecNormalize

    from chuck.metatrain.train import MetaTrainConfig, _make_env, _vec_env

    cfg = MetaTrainConfig(tasks=args.tasks, n_envs=workers, backend=backend, budget_scale=args.budget_scale, ray_cpus_per_env=1.0)
    thunks = [_make_env(cfg.tasks, cfg.interval, cfg.budget_scale, 1000 * i, cfg.prior) for i in range(workers)]
    t0 = time.perf_counter()
    venv = VecNormalize(VecMonitor(_vec_env(cfg, thunks)), norm_obs=True, norm_reward=False, clip_obs=10.0)
    startup = time.perf_counter() - t0
    ppo = {**cfg.ppo, "n_steps": max(8, args.rollout // workers), "batch_size": min(cfg.ppo["batch_size"], args.rollout)}
    model = PPO(
        "MlpPolicy",
        venv,
        seed=0,
        device="cpu",
        verbose=0,
        policy_kwargs={"net_arch": {"pi": list(cfg.net_arch), "vf": list(cfg.net_arch)}, "log_std_init": cfg.log_std_init},
        **ppo,
    )
    model.learn(total_timesteps=ppo["n_steps"] * workers)  # warm-up: first episodes, imports, caches
    return {
        "backend": backend,
        "workers": workers,
        "venv": venv,
        "model": model,
        "startup_s": startup,
        "decisions": 0,
        "seconds": 0.0,
        "rollout_s": 0.0,
    }


def measure_chunk(c: dict, decisions: int) -> None:
    """``decisions`` more PPO timesteps of configuration ``c``, timed (rollouts and updates apart)."""
    timer = _Timer()
    before = c["model"].num_timesteps
    t0 = time.perf_counter()
    c["model"].learn(total_timesteps=decisions, reset_num_timesteps=False, callback=timer.callback())
    c["seconds"] += time.perf_counter() - t0
    c["rollout_s"] += timer.rollout
    c["decisions"] += c["model"].num_timesteps - before


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--backends", default="process,ray")
    ap.add_argument("--timesteps", type=int, default=1024, help="measured decisions per configuration")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds the decisions are split into")
    ap.add_argument("--rollout", type=int, default=256, help="decisions per PPO rollout (n_steps x workers)")
    ap.add_argument("--tasks", default="train")
    ap.add_argument("--budget-scale", type=float, default=1.0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway local runtime: no token file in ~/.ray
    torch.set_num_threads(1)  # the learner: one thread, as the workers have
    sizes = [int(w) for w in args.workers.split(",")]
    backends = args.backends.split(",")
    if "ray" in backends:
        from chuck.metatrain.ray_backend import connect, disconnect

        connect(None, num_cpus=sum(sizes))  # one local runtime holds every Ray configuration at once
    configs = [build(b, w, args) for b in backends for w in sizes]
    try:
        # interleaved rounds (the order rotates): load on the shared machine hits every configuration alike
        for r in range(args.rounds):
            for c in configs[r % len(configs) :] + configs[: r % len(configs)]:
                measure_chunk(c, args.timesteps // args.rounds)
    finally:
        for c in configs:
            c["venv"].close()
        if "ray" in backends:
            disconnect()
    rows = []
    for c in configs:
        n = c["decisions"]
        rows.append(
            {
                "backend": c["backend"],
                "workers": c["workers"],
                "decisions": int(n),
                "seconds": c["seconds"],
                "startup_s": c["startup_s"],
                "decisions_per_s": n / c["seconds"],
                "rollout_decisions_per_s": n / c["rollout_s"],
                "update_s_per_decision": (c["seconds"] - c["rollout_s"]) / n,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    one = {r["backend"]: r for r in rows if r["workers"] == 1}
    result = {
        "rows": rows,
        "per_worker_rollout_rate": {b: r["rollout_decisions_per_s"] for b, r in one.items()},
        "update_s_per_decision": {b: r["update_s_per_decision"] for b, r in one.items()},
        "ray_over_process": {
            w: next(r["decisions_per_s"] for r in rows if r["backend"] == "ray" and r["workers"] == w)
            / next(r["decisions_per_s"] for r in rows if r["backend"] == "process" and r["workers"] == w)
            for w in sizes
        }
        if set(backends) == {"process", "ray"}
        else {},
        "settings": {
            "tasks": args.tasks,
            "budget_scale": args.budget_scale,
            "timesteps": args.timesteps,
            "rollout": args.rollout,
            "rounds": args.rounds,
        },
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))


if __name__ == "__main__":
    main()
