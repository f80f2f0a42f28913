"""Cost of chuck's rank agreement under DistributedDataParallel (two gloo ranks on loopback).

Each rank (one torch thread) trains three DDP replicas of the same model on the same batches,
interleaved in blocks so that machine noise hits all three equally:

* ``bare``: DDP + AdamW;
* ``local``: DDP + ``ChuckOptimizer("heuristic", process_group=False)`` -- every rank decides
  alone (what chuck did before agreement; ranks can diverge);
* ``agreed``: DDP + ``ChuckOptimizer("heuristic")`` -- one all-reduce of five scalars per step,
  rank 0 decides and broadcasts every ``interval`` steps.

The agreement's cost is ``agreed / local``; the isolated latency of the per-step all-reduce is
measured too. Rank 0 prints JSON (and ``--out`` writes it).

    python experiments/bench_ddp.py                      # both models, about 3 minutes on 2 cores
    python experiments/bench_ddp.py --model mlp --rounds 3
"""

from __future__ import annotations

import argparse
import copy
import datetime
import importlib.util
import json
import os
import platform
import socket
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

ARMS = ("bare", "local", "agreed")


def _models():
    spec = importlib.util.spec_from_file_location("bench_overhead", Path(__file__).with_name("bench_overhead.py"))
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod.MODELS


def _block(model, opt, xs, ys, wrapped: bool) -> list[float]:
    times = []
    for x, y in zip(xs, ys):
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step(loss=loss) if wrapped else opt.step()
        opt.zero_grad()
        float(loss.detach())
        times.append(time.perf_counter() - t0)
    return times


def _allreduce_latency(n: int = 2000) -> float:
    t = torch.zeros(5, dtype=torch.float64)
    for _ in range(50):
        dist.all_reduce(t)
    t0 = time.perf_counter()
    for _ in range(n):
        dist.all_reduce(t)
    return (time.perf_counter() - t0) / n


def _rank(rank: int, world: int, port: int, names: list[str], rounds: int, block: int, out: str | None) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    import chuck

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))
    models = _models()
    results: dict = {"allreduce_5_scalars_us": 1e6 * _allreduce_latency()}
    for name in names:
        make, shape, batch = models[name]
        torch.manual_seed(0)
        base = make()
        nets = {arm: DDP(copy.deepcopy(base)) for arm in ARMS}
        opts = {
            "bare": torch.optim.AdamW(nets["bare"].parameters(), lr=1e-3),
            "local": chuck.ChuckOptimizer(
                torch.optim.AdamW(nets["local"].parameters(), lr=1e-3),
                "heuristic",
                model=nets["local"],
                history=False,
                process_group=False,
            ),
            "agreed": chuck.ChuckOptimizer(
                torch.optim.AdamW(nets["agreed"].parameters(), lr=1e-3), "heuristic", model=nets["agreed"], history=False
            ),
        }
        g = torch.Generator().manual_seed(1 + rank)
        xs = [torch.randn(batch, *shape, generator=g) for _ in range(block)]
        ys = [torch.randint(0, 10, (batch,), generator=g) for _ in range(block)]
        times: dict[str, list[float]] = {arm: [] for arm in ARMS}
        for arm in ARMS:
            _block(nets[arm], opts[arm], xs[:5], ys[:5], arm != "bare")  # warm-up
        for r in range(rounds):
            order = ARMS if r % 2 == 0 else ARMS[::-1]
            for arm in order:
                times[arm] += _block(nets[arm], opts[arm], xs, ys, arm != "bare")
        med = {arm: statistics.median(t) * 1e3 for arm, t in times.items()}
        mean = {arm: statistics.fmean(t) * 1e3 for arm, t in times.items()}
        results[name] = {
            "params": sum(p.numel() for p in base.parameters()),
            "batch": batch,
            "steps_per_arm": len(times["bare"]),
            "median_ms": med,
            "mean_ms": mean,
            "agreed_over_local_median": med["agreed"] / med["local"],
            "agreed_over_local_mean": mean["agreed"] / mean["local"],
            "agreed_over_bare_median": med["agreed"] / med["bare"],
            "local_over_bare_median": med["local"] / med["bare"],
            "collectives_per_step": opts["agreed"]._ranks.collectives / opts["agreed"].calls,
        }
        for o in opts.values():
            if hasattr(o, "close"):
                o.close()
    results["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    results["world_size"] = world
    if rank == 0:
        text = json.dumps(results, indent=1)
        print(text)
        if out:
            Path(out).write_text(text + "\n")
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["cnn", "mlp", "both"], default="both")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--block", type=int, default=50)
    ap.add_argument("--out", default=None, help="write the JSON here (e.g. docs/results/ddp_overhead.json)")
    args = ap.parse_args()
    names = ["mlp", "cnn"] if args.model == "both" else [args.model]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_rank, args=(2, port, names, args.rounds, args.block, args.out), nprocs=2, start_method="spawn")


if __name__ == "__main__":
    main()
