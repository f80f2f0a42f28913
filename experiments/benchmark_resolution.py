"""What the evaluation resolves: its references replayed at lr x (1 +- 1e-3) (chuck.evaluation.resolution).

Prints, as an arm's figures, the regret of each instance's oracle-winning run trained again with its lr
moved by a thousandth, and the harm of the best-constant-lr AdamW run moved the same way; per family too.
A policy that knew the best configuration would score about these figures; the issue's targets (median
<= 1.10, >= 60% within 10%, <= 5% of harm probes above 1.05) can be read against them.

    python experiments/benchmark_resolution.py --tasks validation --seeds 0,1,2,3,4,5 \
        --out docs/results/resolution_validation.json
    python experiments/benchmark_resolution.py --tasks train --seeds 0 --out docs/results/resolution_train.json

Uses (and completes) the oracle cache under $CHUCK_HOME that `chuck evaluate` keeps.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from chuck.evaluation.resolution import DEFAULT_EPS, plot_replays, replay_references
from chuck.evaluation.runner import resolve_task_spec
from chuck.evaluation.stats import stats_line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="validation", help="a split or task ids, as for chuck evaluate (default: %(default)s)")
    ap.add_argument("--seeds", default="0,1,2", help="instance seeds (default: %(default)s)")
    ap.add_argument("--eps", default=",".join(map(str, DEFAULT_EPS)), help="relative lr perturbations (default: %(default)s)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, help="write the figures and every replay as JSON here (and a plot beside it, .png)")
    args = ap.parse_args()
    tasks = resolve_task_spec(args.tasks)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    eps = tuple(float(e) for e in args.eps.split(",") if e.strip())
    t0 = time.time()
    res = replay_references(tasks, seeds, eps=eps, workers=args.workers)
    print(
        f"{res.instances} instances, eps {eps}, {time.time() - t0:.0f} s; eps=0 replays reproduced {res.reproduced}/{res.instances}"
    )
    for m in res.mismatches:
        print("  NOT REPRODUCED:", m)
    print(stats_line("oracle winner replayed (regret)", res.oracle))
    if res.tuned is not None:
        print(stats_line("tuned-lr AdamW replayed (harm)", res.tuned))
        harm = [r["ratio"] for r in res.rows if r["reference"] == "tuned"]
        print(f"{'':34s} harm > 1.2: {sum(h > 1.2 for h in harm)} of {len(harm)} probes")
    for fam, s in res.per_family.items():
        print(stats_line("  " + fam, s))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        doc = {"command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "tasks": args.tasks, "seeds": seeds}
        doc |= {"eps": list(eps), "seconds": round(time.time() - t0, 1)} | res.to_dict()
        args.out.write_text(json.dumps(doc, indent=1, default=float))
        png = plot_replays(
            res.rows, args.out.with_suffix(".png"), f"{args.tasks}: the references replayed ({len(res.rows)} replays)"
        )
        print("wrote", args.out, png or "")


if __name__ == "__main__":
    main()
