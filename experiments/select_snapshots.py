"""The snapshots a retrain's selection rule measures, chosen from the run's own held-out curve alone.

A rule written before any snapshot is measured (for run v8: docs/results/retrain_v8/RULE.md) names its
candidates by the trainer's held-out evaluations: the final snapshot, and the ``--best`` snapshots after
``--after`` decisions with the highest held-out return. This reads those evaluations from the run's
checkpoint state, prints the candidates and the commands that measure them against the shipped default,
so that the choice is mechanical and made before any validation figure exists.

    python experiments/select_snapshots.py experiments/runs/default-v8
    python experiments/select_snapshots.py experiments/runs/default-v8 --after 150000 --best 2 --out docs/results/validation_v8

A run that has not reached ``--timesteps`` is refused (its last snapshot is not the rule's final one)
unless ``--unfinished`` is given, which only lists what would be chosen so far.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: The families whose regrets are ratios of near-zero losses, excluded in the rule's second figure.
PARITY = "tabular.sparse_parity_mlp"


def trained(evaluations: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trained policy's evaluations (rows whose ``arm`` is ``"trained"``, or that have none)."""
    return [e for e in evaluations if e.get("arm", "trained") == "trained"]


def candidates(evaluations: Sequence[dict[str, Any]], *, after: int, best: int) -> list[int]:
    """Timesteps of the candidates: the last evaluation's, then the ``best`` other evaluations after
    ``after`` by held-out return (ties: the later one), in that order.

    Only the trained policy's evaluations count (:func:`trained`).
    """
    rows = trained(evaluations)
    if not rows:
        raise ValueError("the run holds no held-out evaluation of its trained policy yet")
    final = max(int(e["timesteps"]) for e in rows)
    late = [e for e in rows if int(e["timesteps"]) > after and int(e["timesteps"]) != final]
    late.sort(key=lambda e: (float(e["heldout_return"]), int(e["timesteps"])), reverse=True)
    return [final] + [int(e["timesteps"]) for e in late[:best]]


def commands(run: Path, steps: Sequence[int], out: str) -> list[str]:
    """The rule's measurements of ``steps`` against the shipped default (validation, every base it names)."""
    snaps = [f"{run.as_posix()}/snapshots/{s:08d}" for s in steps]
    arms = ",".join(["default", *snaps])
    base = f"chuck evaluate --policies {arms} --baselines prodigy --tasks validation --seeds 0,1,2 --workers 2"
    lines = [
        f"{base} --base-optimizer AdamW,SGD,Adafactor --out {out}",
        f"{base} --base-optimizer AdamW,SGD --no-observe --out {out}",
    ]
    # `chuck evaluate --no-observe` names its arms ARM/no-observe; Adafactor is measured with observe only
    settings = (("", ("AdamW", "SGD", "Adafactor")), ("/no-observe", ("AdamW", "SGD")))
    for snap in snaps:
        for suffix, bases in settings:
            for b in bases:
                paired = (
                    f"python experiments/paired_regret.py {out}/rows.csv chuck:default{suffix} chuck:{snap}{suffix} --base {b}"
                )
                lines.append(paired)
                if b != "Adafactor":
                    lines.append(f"{paired} --exclude-family {PARITY}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="the run's output directory (experiments/runs/default-vN)")
    ap.add_argument("--after", type=int, default=150_000, help="late snapshots: after this many decisions (default: %(default)s)")
    ap.add_argument("--best", type=int, default=2, help="how many late snapshots besides the final one (default: %(default)s)")
    ap.add_argument("--timesteps", type=int, default=200_000, help="the run's budget (default: %(default)s)")
    ap.add_argument("--unfinished", action="store_true", help="list the choice so far of a run short of its budget")
    ap.add_argument("--out", default="docs/results/validation_vN", help="the evaluation directory the commands write")
    args = ap.parse_args(argv)
    state = args.run / "checkpoint" / "state.json"
    if not state.is_file():
        print(f"select_snapshots: error: no checkpoint state at {state}", file=sys.stderr)
        return 2
    saved = json.loads(state.read_text())
    done = int(saved.get("timesteps", 0))
    if done < args.timesteps and not args.unfinished:
        print(
            f"select_snapshots: error: {args.run} is at {done:,} of {args.timesteps:,} decisions: finish it first "
            "(its last snapshot is not the final one), or pass --unfinished to see the choice so far",
            file=sys.stderr,
        )
        return 2
    try:
        steps = candidates(saved.get("evaluations") or [], after=args.after, best=args.best)
    except ValueError as exc:
        print(f"select_snapshots: error: {exc}", file=sys.stderr)
        return 2
    if steps[0] != done and not args.unfinished:  # stopped between the last save and the final evaluation
        print(
            f"select_snapshots: error: {args.run} saved {done:,} decisions but its last held-out evaluation is at "
            f"{steps[0]:,}: rerun the training command, which evaluates the final policy, then this",
            file=sys.stderr,
        )
        return 2
    returns = {int(e["timesteps"]): float(e["heldout_return"]) for e in trained(saved["evaluations"])}
    print(f"{args.run}: {done:,} decisions; candidates (final first):")
    for s in steps:
        where = args.run / "snapshots" / f"{s:08d}"
        print(f"  {where}  held-out return {returns[s]:.3f}{'' if where.is_dir() else '  (MISSING)'}")
    print("\n".join(["", *commands(args.run, steps, args.out)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
