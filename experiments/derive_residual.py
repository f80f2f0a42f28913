"""Derive a residual policy from PPO snapshots without training: average, shrink, or move it to another prior.

The levers and their references are in :mod:`chuck.policies.derive`. The result is an ordinary
artifact (``chuck evaluate --policies OUT``; ``install_default.py --snapshot OUT --residual keep``
ships it) whose card records how it was derived. The runs under experiments/runs/ are git-ignored and
the committed ones live in git history (``git checkout b3d3e5d -- experiments/runs/default-v4``; see
docs/results/MANIFEST.md).

    python experiments/derive_residual.py --run-dir experiments/runs/default-v4 --last 0.25 \\
        --out experiments/runs/derived/v4-swa151k      # the average of the last quarter's snapshots
    python experiments/derive_residual.py --snapshots experiments/runs/default-v4/snapshots/00200192 \\
        --scale 0.5 --out experiments/runs/derived/v4-half
    python experiments/derive_residual.py --ensemble --snapshots RUN_A/snapshots/N RUN_B/snapshots/M \\
        --out experiments/runs/derived/NAME    # independent runs on one prior: their actions averaged
    python experiments/derive_residual.py --snapshots experiments/runs/default-v4/snapshots/00200192 \\
        --cooldown-cap --out experiments/runs/derived/v4-cooldown-cap   # no learned raise in the cooldown
    python experiments/derive_residual.py --snapshots experiments/runs/default-v4/snapshots/00200192 \
        --mask ctrl.log_lr_mult --out experiments/runs/derived/v4-no-lr-mult   # blind to the user's starting lr
"""

from __future__ import annotations

import argparse
from pathlib import Path

from chuck.policies.artifact import load_artifact, save_artifact
from chuck.policies.card import KNOWN_PRIORS
from chuck.policies.derive import derive_residual


def last_snapshots(run_dir: str, last: float) -> list[str]:
    """The snapshots of a training run (``RUN/snapshots/<decisions>``) taken in the last ``last`` share of
    its decisions, i.e. at or after ``(1 - last)`` x the decisions of its latest snapshot."""
    if not 0 < last <= 1:
        raise SystemExit(f"--last must be in (0, 1], got {last}")
    snaps = sorted((int(p.name), str(p)) for p in (Path(run_dir) / "snapshots").iterdir() if p.name.isdigit())
    if not snaps:
        raise SystemExit(f"no snapshots in {run_dir}/snapshots")
    start = (1 - last) * snaps[-1][0]
    return [path for n, path in snaps if n >= start]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--snapshots", nargs="+", help="PPO snapshot directories of one run (averaged)")
    which.add_argument("--run-dir", help="a training run's directory: average its snapshots of the --last share")
    ap.add_argument(
        "--last", type=float, default=0.25, help="with --run-dir: the share of the run to average (default: %(default)s)"
    )
    ap.add_argument(
        "--ensemble", action="store_true", help="average the snapshots' actions instead of their weights (independent runs)"
    )
    ap.add_argument(
        "--progress-gate",
        type=float,
        help="the residual may not lower the lr while log(smoothed loss / starting loss) > -GATE (e.g. 0.05)",
    )
    ap.add_argument(
        "--cooldown-cap", action="store_true", help="in the prior's cooldown the residual may lower the lr, not raise it"
    )
    ap.add_argument(
        "--mask", action="append", default=[], help="an observation feature the actor reads at its training mean (repeatable)"
    )
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the residual by this (default: %(default)s)")
    ap.add_argument("--prior", choices=KNOWN_PRIORS, help="put the residual on this prior (default: the snapshots')")
    ap.add_argument("--out", required=True, help="where to write the derived artifact")
    args = ap.parse_args()
    snapshots = args.snapshots or last_snapshots(args.run_dir, args.last)
    try:
        actor, card = derive_residual(
            [load_artifact(s) for s in snapshots],
            args.scale,
            args.prior,
            snapshots,
            ensemble=args.ensemble,
            progress_gate=args.progress_gate,
            cooldown_cap=args.cooldown_cap,
            mask=args.mask,
        )
    except ValueError as e:
        raise SystemExit(str(e)) from None
    out = save_artifact(actor, args.out, card)
    load_artifact(out)  # refuse to leave an artifact chuck cannot load
    print(f"derived {card['version']} from {len(snapshots)} snapshot(s) -> {out}")


if __name__ == "__main__":
    main()
