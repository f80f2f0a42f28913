"""Noisy runs under every policy: what the guardrails cost, and what the policies themselves do.

    OMP_NUM_THREADS=1 python experiments/noisy_runs.py [--out docs/results/noisy_runs.json]

The set-ups of ``tests/core/test_guardrails_on_noisy_runs.py`` (per-sample and batch-of-two regression,
heavy-tailed noise, label noise at batch 1, alternating task batches, a noisy validation loss, a negative
loss, identical blocks unfrozen in turn), each trained bare and under "constant", "heuristic" and
"default" with the guardrails on and off, one seed, the same data. Prints the clean test error of each
as a ratio to the bare optimizer's, and the lr multiplier each run ended at.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.core.test_guardrails_on_noisy_runs import RUNS, train, train_steering  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name, make in RUNS.items():
        bare, _, _ = train(make(), None)
        row = {"run": name, "bare": bare}
        for policy in ("constant", "heuristic", "default"):
            for guard in (True, False):
                row[f"{policy}{'' if guard else ' unguarded'}"] = train_steering(make(), policy, guard) / bare
        rows.append(row)
        print(
            f"{name:36s} bare {bare:.4g}  " + "  ".join(f"{k} {v:.2f}" for k, v in row.items() if k not in ("run", "bare")),
            flush=True,
        )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
