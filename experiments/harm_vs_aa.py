"""Harm at the tuned lr against the benchmark's A/A floor: how much of an arm's harm is noise.

A harm probe divides an arm's final loss at the instance's best constant lr by constant AdamW's there.
`experiments/benchmark_resolution.py` replays that AdamW run with its lr moved by +-1e-3 (the A/A
control); its ratios are what a policy that changed nothing but the last bits of the step size scores.
Per arm this prints the harm shares over the probes of instances that were replayed, the A/A's own
shares on those instances, and the share of probes harmed *beyond* the A/A: above 1.05 and above
every replay of that instance (a probe inside its instance's A/A spread is not evidence of harm).

    python experiments/harm_vs_aa.py docs/results/resolution_test.json docs/results/test_v10/rows.csv
    python experiments/harm_vs_aa.py docs/results/resolution_validation.json \
        docs/results/validation/rng_fixed/rows.csv --arms chuck:default,cosine,prodigy
"""

from __future__ import annotations

import argparse
import json

import polars as pl

from chuck.evaluation.resolution import harm_against_aa


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("resolution", help="a JSON written by experiments/benchmark_resolution.py --out")
    ap.add_argument("rows", help="a chuck evaluate rows.csv on the same instances")
    ap.add_argument("--arms", help="comma-separated arms (default: every arm with harm probes)")
    args = ap.parse_args()
    with open(args.resolution) as f:
        replays = json.load(f)["rows"]
    probes = pl.read_csv(args.rows, infer_schema_length=0).filter(pl.col("kind") == "harm_probe").to_dicts()
    table = harm_against_aa(replays, probes)
    aa = table.pop("A/A", None)
    if aa is None:
        raise SystemExit(f"{args.resolution} holds no tuned-lr replays")
    arms = [a.strip() for a in args.arms.split(",")] if args.arms else sorted(table)
    missing = [a for a in arms if a not in table]
    if missing:
        raise SystemExit(f"no harm probes of {missing} on replayed instances; arms: {sorted(table)}")
    print(
        f"{args.rows} against {args.resolution}: the A/A (tuned AdamW replayed, {aa['probes']:.0f} replays) "
        f"harm > 1.05 {aa['harm_rate']:.0%}, > 1.2 {aa['severe_rate']:.0%}"
    )
    for arm in arms:
        t = table[arm]
        print(
            f"  {arm:48s} {t['probes']:3.0f} probes  harm > 1.05 {t['harm_rate']:4.0%}  > 1.2 {t['severe_rate']:4.0%}"
            f"  beyond the A/A {t['beyond_aa']:4.0%}  worst {t['worst']:.3g}"
        )


if __name__ == "__main__":
    main()
