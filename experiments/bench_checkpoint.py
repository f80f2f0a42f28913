"""What a checkpoint of a long run costs: time, size and memory, against the number of decisions.

A 161-parameter MLP (8 -> 16 -> 1) is trained for N steps (default 100,000) under the default
policy, a decision every 20 steps, in a fast loop (a fixed pool of pre-built batches). The optimizer
keeps its last ``max_decisions`` (10,000) decisions in memory; a checkpoint carries the last
``CHECKPOINT_DECISIONS`` (1,000) of them, so its size and cost stop growing once the run has made
that many decisions. Measured:

* the serialized checkpoint (``state_dict()`` + ``torch.save`` to memory), in MiB, whole and its
  ``"chuck"`` entry alone, each time the run reaches 500, 1000, 2000, ... decisions;
* at the end: the time of ``state_dict()`` + ``torch.save``, and of ``torch.load(weights_only=True)``
  + ``load_state_dict`` into a fresh optimizer (medians of several repeats);
* the process's resident memory (RSS): its growth over the run (the in-memory decision log) and over
  the save/load repeats.

    python experiments/bench_checkpoint.py                 # 100,000 steps (several minutes on 2 cores)
    python experiments/bench_checkpoint.py --steps 20000   # quicker: 1,000 decisions
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import platform
import statistics
import time
from pathlib import Path

import psutil
import torch
import torch.nn.functional as F
from torch import nn

import chuck
from chuck.core.optimizer import CHECKPOINT_DECISIONS

INTERVAL = 20
POOL = 64  # pre-built batches, reused in turn
MARKS = (500, 1000, 2000, 3000, 4000, 5000, 7500, 10_000)  # decision counts at which the size is taken
OUT = Path(__file__).resolve().parents[1] / "docs" / "results" / "checkpoint_cost.json"


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))  # 8*16+16 + 16+1 = 161 parameters


def make_opt(model: nn.Module, steps: int) -> chuck.ChuckOptimizer:
    opt = chuck.ChuckOptimizer(
        torch.optim.AdamW(model.parameters(), lr=1e-3),
        "default",
        model=model,
        total_steps=steps,
        interval=INTERVAL,
        history=False,
    )
    opt.advise = False
    return opt


def serialize(opt: chuck.ChuckOptimizer) -> tuple[bytes, float, float]:
    """The checkpoint's bytes and the seconds ``state_dict()`` + ``torch.save`` took (wall clock, CPU)."""
    t0, c0 = time.perf_counter(), time.process_time()
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    return buf.getvalue(), time.perf_counter() - t0, time.process_time() - c0


def chuck_entry_mib(opt: chuck.ChuckOptimizer) -> float:
    buf = io.BytesIO()
    torch.save(opt.state_dict()["chuck"], buf)
    return buf.tell() / 2**20


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000, help="training steps (a decision every 20)")
    parser.add_argument("--repeats", type=int, default=5, help="save and load repeats timed at the end")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)

    gen = torch.Generator().manual_seed(1)
    xs = torch.randn(POOL, 32, 8, generator=gen)
    ys = xs[..., :1] * 0.5 + xs[..., 1:2].sin()
    model = make_model()
    assert sum(p.numel() for p in model.parameters()) == 161
    opt = make_opt(model, args.steps)

    gc.collect()
    rss_start = rss_mib()
    sizes = []
    marks = iter(MARKS)
    mark = next(marks)
    t0 = time.perf_counter()
    for step in range(args.steps):
        loss = F.mse_loss(model(xs[step % POOL]), ys[step % POOL])
        loss.backward()
        opt.step(loss=loss)
        opt.zero_grad(set_to_none=True)
        if len(opt.decisions) >= mark:
            blob, _, _ = serialize(opt)
            sizes.append(
                {
                    "step": step + 1,
                    "decisions_in_memory": len(opt.decisions),
                    "decisions_in_checkpoint": len(opt.state_dict()["chuck"]["decisions"]),
                    "checkpoint_mib": len(blob) / 2**20,
                    "chuck_entry_mib": chuck_entry_mib(opt),
                }
            )
            print(
                f"{len(opt.decisions):>6} decisions (step {step + 1}): checkpoint {sizes[-1]['checkpoint_mib']:.2f} MiB, "
                f"chuck entry {sizes[-1]['chuck_entry_mib']:.2f} MiB, {sizes[-1]['decisions_in_checkpoint']} decisions in it",
                flush=True,
            )
            mark = next(marks, 10**12)
    train_s = time.perf_counter() - t0
    gc.collect()
    rss_trained = rss_mib()

    save_s, read_s, load_s, save_cpu, load_cpu = [], [], [], [], []
    blob = b""
    for _ in range(args.repeats):
        blob, seconds, cpu = serialize(opt)
        save_s.append(seconds)
        save_cpu.append(cpu)
        fresh = make_opt(make_model(), args.steps)
        t1, c1 = time.perf_counter(), time.process_time()
        sd = torch.load(io.BytesIO(blob), weights_only=True)
        t2 = time.perf_counter()
        fresh.load_state_dict(sd)
        read_s.append(t2 - t1)
        load_s.append(time.perf_counter() - t2)
        load_cpu.append(time.process_time() - c1)
        assert len(fresh.decisions) == min(len(opt.decisions), CHECKPOINT_DECISIONS)
        fresh.close()
        del fresh, sd
        gc.collect()  # an optimizer sits in reference cycles: what the repeats leave behind is only garbage
    rss_end = rss_mib()

    result = {
        "what": "checkpoint cost of a long run: 161-parameter MLP, default policy, a decision every 20 steps",
        "steps": args.steps,
        "decisions_in_memory": len(opt.decisions),
        "decisions_in_checkpoint": len(opt.state_dict()["chuck"]["decisions"]),
        "checkpoint_decisions_cap": CHECKPOINT_DECISIONS,
        "train_seconds": round(train_s, 1),
        "save_seconds_median": statistics.median(save_s),
        "torch_load_seconds_median": statistics.median(read_s),
        "load_state_dict_seconds_median": statistics.median(load_s),
        "load_seconds_median": statistics.median([a + b for a, b in zip(read_s, load_s)]),
        # CPU time of this process: what the wall clock would read on an idle machine (one thread)
        "save_cpu_seconds_median": statistics.median(save_cpu),
        "load_cpu_seconds_median": statistics.median(load_cpu),
        "checkpoint_mib": len(blob) / 2**20,
        "chuck_entry_mib": chuck_entry_mib(opt),
        "rss_mib_start": round(rss_start, 1),
        "rss_growth_over_run_mib": round(rss_trained - rss_start, 1),
        "rss_growth_over_save_load_mib": round(rss_end - rss_trained, 1),
        "size_by_decisions": sizes,
        "repeats": args.repeats,
        "machine": f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} cores, torch {torch.__version__}",
    }
    print(
        f"{args.steps} steps in {train_s:.0f} s, {result['decisions_in_memory']} decisions in memory, "
        f"{result['decisions_in_checkpoint']} in the checkpoint\n"
        f"state_dict() + torch.save: {result['save_seconds_median'] * 1e3:.0f} ms; "
        f"torch.load(weights_only=True) + load_state_dict: {result['load_seconds_median'] * 1e3:.0f} ms "
        f"({result['torch_load_seconds_median'] * 1e3:.0f} + {result['load_state_dict_seconds_median'] * 1e3:.0f}; "
        f"medians of {args.repeats}); CPU time: save {result['save_cpu_seconds_median'] * 1e3:.0f} ms, "
        f"load {result['load_cpu_seconds_median'] * 1e3:.0f} ms\n"
        f"checkpoint {result['checkpoint_mib']:.2f} MiB (chuck entry {result['chuck_entry_mib']:.2f} MiB); "
        f"RSS {rss_start:.0f} MiB at the start, +{result['rss_growth_over_run_mib']:.1f} MiB over the run, "
        f"+{result['rss_growth_over_save_load_mib']:.1f} MiB over the save/load repeats"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
