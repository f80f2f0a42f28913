"""The policy evaluation behind docs/results: a thin wrapper of ``chuck evaluate``.

Every arm (chuck's default and heuristic policies; AdamW, cosine, plateau, schedule-free,
Prodigy) trains the same test-family instances from starting lrs 1e-4..1e-1; regret is the
final validation loss over the best of a nine-lr sweep (see chuck/evaluation/). This script
only picks the output folder and the worker count; every ``chuck evaluate`` flag passes through.

    python experiments/evaluate_policies.py                  # -> docs/results/policy_eval/
    python experiments/evaluate_policies.py --no-observe     # -> docs/results/policy_eval_no_observe/
    python experiments/evaluate_policies.py --seeds 0 --lrs 1e-3 --out /tmp/quick   # quick look
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(argv: list[str]) -> int:
    from chuck.cli.main import main

    args = list(argv)
    if not any(a == "--out" or a.startswith("--out=") for a in args):
        name = "policy_eval_no_observe" if "--no-observe" in args else "policy_eval"
        args += ["--out", str(ROOT / "docs" / "results" / name)]
    if not any(a == "--workers" or a.startswith("--workers=") for a in args):
        args += ["--workers", str(os.cpu_count() or 1)]
    return main(["evaluate", *args])


if __name__ == "__main__":  # the guard matters: worker processes re-import this module
    sys.exit(run(sys.argv[1:]))
