"""Harm at the tuned lr against the benchmark's A/A floor: how much of an arm's harm is noise.

A harm probe divides an arm's final loss at the instance's best constant lr by constant AdamW's there.
`experiments/benchmark_resolution.py` replays that AdamW run with its lr moved by +-1e-3 (the A/A
control); its ratios are what a policy that changed nothing but the last bits of the step size scores.
Per arm this prints the harm shares over the probes of instances that were replayed, the A/A's own
shares on those instances, and the share of probes harmed *beyond* the A/A: above 1.05 and above
every replay of that instance (a probe inside its instance's A/A spread is not evidence of harm).

    python experiments/harm_vs_aa.py docs/results/resolution_test.json docs/results/test_v8/rows.csv
    python experiments/harm_vs_aa.py docs/results/resolution_validation.json \
        docs/results/validation/same_oracle/rows.csv --arms chuck:default,cosine,prodigy
"""

from __future__ import annotations

import argparse
import json

import polars as pl

from chuck.evaluation.stats import HARM_THRESHOLD

SEVERE = 1.2  # the "none worse by more than 20%"


def aa_floor(resolution: dict) -> pl.DataFrame:
    """Per replayed instance: the largest tuned-lr A/A ratio, and the replays' ratios."""
    rows = [r for r in resolution["rows"] if r["reference"] == "tuned"]
    if not rows:
        raise SystemExit("the resolution file holds no tuned-lr replays")
    aa = pl.DataFrame(
        {"task_id": [r["task_id"] for r in rows], "seed": [int(r["seed"]) for r in rows], "aa": [r["ratio"] for r in rows]}
    )
    return aa.group_by(["task_id", "seed"]).agg(pl.col("aa").max().alias("aa_max"), pl.col("aa"))


def harm_table(resolution: dict, rows: pl.DataFrame, arms: list[str] | None) -> pl.DataFrame:
    floor = aa_floor(resolution)
    probes = (
        rows.filter(pl.col("kind") == "harm_probe")
        .select(pl.col("task_id"), pl.col("seed").cast(pl.Int64), pl.col("arm"), pl.col("harm").cast(pl.Float64))
        .join(floor, on=["task_id", "seed"], how="inner")
    )
    if arms:
        missing = sorted(set(arms) - set(probes["arm"].unique().to_list()))
        if missing:
            raise SystemExit(
                f"no harm probes of {missing} on replayed instances; arms: {sorted(probes['arm'].unique().to_list())}"
            )
        probes = probes.filter(pl.col("arm").is_in(arms))
    replays = floor.explode("aa")
    aa = replays["aa"].to_numpy()
    aa_105, aa_12 = float((aa > HARM_THRESHOLD).mean()), float((aa > SEVERE).mean())
    return (
        probes.group_by("arm")
        .agg(
            pl.len().alias("probes"),
            (pl.col("harm") > HARM_THRESHOLD).mean().alias("harm > 1.05"),
            (pl.col("harm") > SEVERE).mean().alias("harm > 1.2"),
            ((pl.col("harm") > HARM_THRESHOLD) & (pl.col("harm") > pl.col("aa_max"))).mean().alias("beyond A/A"),
            pl.col("harm").max().alias("worst"),
        )
        .with_columns(pl.lit(aa_105).alias("A/A > 1.05"), pl.lit(aa_12).alias("A/A > 1.2"))
        .sort("arm")
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("resolution", help="a JSON written by experiments/benchmark_resolution.py --out")
    ap.add_argument("rows", help="a chuck evaluate rows.csv on the same instances")
    ap.add_argument("--arms", help="comma-separated arms (default: every arm with harm probes)")
    args = ap.parse_args()
    with open(args.resolution) as f:
        resolution = json.load(f)
    rows = pl.read_csv(args.rows, infer_schema_length=0)
    arms = [a.strip() for a in args.arms.split(",")] if args.arms else None
    table = harm_table(resolution, rows, arms)
    pct = ["harm > 1.05", "harm > 1.2", "beyond A/A", "A/A > 1.05", "A/A > 1.2"]
    print(f"{args.rows} against {args.resolution}: {max(table['probes'].to_list())} probes per arm on replayed instances")
    for r in table.iter_rows(named=True):
        cells = "  ".join(f"{k} {r[k]:4.0%}" for k in pct)
        print(f"  {r['arm']:48s} {cells}  worst {r['worst']:.3g}")


if __name__ == "__main__":
    main()
