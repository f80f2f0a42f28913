"""The targets against hindsight: what a user who picked the grid's best lr after the fact reaches.

Reads each instance's cached oracle sweep (`$CHUCK_HOME/oracle`, written by `chuck evaluate`; nothing
is trained) and prints the hindsight rows of `chuck.evaluation.hindsight`: AdamW + cosine and constant
AdamW at the lr of the grid whose run ended lowest, and cosine one grid step (half a decade) off it,
with the statistics an arm gets. With `--rows`, the arms of a `chuck evaluate` rows.csv on the same
instances are printed beside them (their main runs, every starting lr).

    python experiments/hindsight_ceiling.py --tasks test --seeds 0,1,2 \
        --rows docs/results/test_v10/rows.csv --arms chuck:default,chuck:default/no-observe,prodigy \
        --out docs/results/hindsight_test.json
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from dataclasses import asdict
from pathlib import Path

from chuck.evaluation.hindsight import hindsight_stats, rows_from_cache
from chuck.evaluation.runner import resolve_task_spec
from chuck.evaluation.schedule import parse_row
from chuck.evaluation.stats import ArmStats, arm_stats, stats_line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="test", help="a split, task ids, ... (as chuck evaluate --tasks)")
    ap.add_argument("--seeds", default="0,1,2", help="instance seeds (as chuck evaluate --seeds)")
    ap.add_argument("--budget-scale", type=float, default=1.0)
    ap.add_argument("--rows", help="a chuck evaluate rows.csv on the same instances, for --arms")
    ap.add_argument("--arms", default="", help="comma-separated arms of --rows to print beside the hindsight rows")
    ap.add_argument("--out", type=Path, help="write the figures (and every hindsight row) to this JSON")
    args = ap.parse_args()
    tasks = resolve_task_spec(args.tasks)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows, missing, incomplete = rows_from_cache(tasks, seeds, args.budget_scale)
    oracles = {(r["task_id"], r["seed"]): r["oracle_loss"] for r in rows}
    if missing:
        raise SystemExit(f"no oracle sweep cached for {missing}: run chuck evaluate on them first")
    if incomplete:
        print(f"runs the cache lacks (crashed, or not run yet), left out: {'; '.join(incomplete)}")
    stats = hindsight_stats(rows)
    print(f"{args.tasks}, seeds {args.seeds}: {len(tasks) * len(seeds)} instances")
    for name, s in stats.items():
        print(stats_line(f"hindsight: {name}", s, 40))
    arms: dict[str, ArmStats] = {}
    if args.rows:
        with open(args.rows, newline="") as f:
            parsed = [parse_row(raw) for raw in csv.DictReader(f)]
        main_rows = [r for r in parsed if r is not None and r["kind"] == "main" and (r["task_id"], r["seed"]) in oracles]
        stale = {
            (r["task_id"], r["seed"])
            for r in main_rows
            if not math.isclose(float(r["oracle_loss"]), oracles[(r["task_id"], int(r["seed"]))], rel_tol=1e-9)
        }
        if stale:
            raise SystemExit(f"{args.rows} was measured against another oracle on {sorted(stale)}: not comparable")
        for arm in [a.strip() for a in args.arms.split(",") if a.strip()]:
            mine = [r for r in main_rows if r["arm"] == arm]
            if not mine:
                raise SystemExit(f"{args.rows} has no main rows of {arm!r} on these instances")
            arms[arm] = arm_stats(mine, None)
            print(stats_line(arm, arms[arm], 40))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        blob = {
            "tasks": args.tasks,
            "seeds": seeds,
            "budget_scale": args.budget_scale,
            "hindsight": {k: asdict(v) for k, v in stats.items()},
            "arms": {k: asdict(v) for k, v in arms.items()},
            "rows": rows,
        }
        args.out.write_text(json.dumps(blob, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
