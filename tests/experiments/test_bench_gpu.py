"""experiments/bench_gpu.py runs end to end (on the CPU, with its tiny model): what a GPU session runs once."""

from __future__ import annotations

import argparse
import importlib
import math
from pathlib import Path

import torch

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def test_the_accelerator_benchmark_measures_every_arm_on_a_cpu(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(EXPERIMENTS))  # the script imports its sibling bench_overhead as a script does
    bench = importlib.import_module("bench_gpu")
    args = argparse.Namespace(width=32, layers=1, heads=2, vocab=64, context=16, batch=4, lr=3e-3, rounds=2, block=20, steps=30)
    cpu = torch.device("cpu")
    out = bench.overhead(args, cpu)
    assert out["params"] > 0 and out["ratio_paired_blocks"] > 0 and out["control_ratio_paired_blocks"] > 0
    assert "host_syncs_per_step" not in out, "sync counting needs CUDA"
    run = bench.real_run(args, cpu)
    assert set(run) == {"adamw", "chuck", "prodigy", "floor"} and all(math.isfinite(v) for v in run.values())
    train, val = bench.MarkovStream(64, 4, 2, 8, cpu, seed=1), bench.MarkovStream(64, 4, 2, 8, cpu, seed=7)
    assert torch.equal(train.next, val.next), "training and validation draw from one chain"
