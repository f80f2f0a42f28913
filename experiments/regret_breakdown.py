"""Where an arm's geometric-mean regret comes from: its log regrets summed by family and starting lr.

The geo-mean is exp(mean log regret), so each (family, starting lr) cell adds its summed log regret to
the total; a cell that holds most of the total is where the arm loses, and the geo-mean without a family
says how much one family decides. Reads a `chuck evaluate` rows.csv (main runs only).

    python experiments/regret_breakdown.py docs/results/validation/rng_fixed/rows.csv chuck:default
    python experiments/regret_breakdown.py ROWS prodigy --top 5
"""

from __future__ import annotations

import argparse
import math

import polars as pl


def breakdown(rows: pl.DataFrame, arm: str) -> tuple[pl.DataFrame, float, int]:
    """Per (family, lr): runs, summed log regret and geo regret; and the arm's total log regret and run count."""
    main = rows.filter((pl.col("kind") == "main") & (pl.col("arm") == arm)).with_columns(pl.col("regret").log().alias("log"))
    if main.is_empty():
        raise SystemExit(f"no main runs of arm {arm!r}; arms: {sorted(rows['arm'].unique().to_list())}")
    cells = (
        main.group_by(["family", "lr"])
        .agg(pl.len().alias("runs"), pl.col("log").sum().alias("log_sum"), pl.col("log").mean().exp().alias("geo"))
        .sort("log_sum", descending=True)
    )
    return cells, float(main["log"].sum()), main.height


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rows", help="a chuck evaluate rows.csv")
    ap.add_argument("arm", help="the arm, as in rows.csv (e.g. chuck:default, prodigy)")
    ap.add_argument("--top", type=int, default=8, help="cells to print (default: %(default)s)")
    args = ap.parse_args()
    rows = pl.read_csv(args.rows, columns=["kind", "arm", "family", "lr", "regret"])
    cells, total, n = breakdown(rows, args.arm)
    print(f"{args.arm}: {n} runs, summed log regret {total:.1f}, geo regret {math.exp(total / n):.3f}")
    for r in cells.head(args.top).iter_rows(named=True):
        print(f"  {r['family']:32s} lr {r['lr']:<8g} {r['runs']:3d} runs  log sum {r['log_sum']:6.1f}  geo {r['geo']:.3g}")
    families = cells.group_by("family").agg(pl.col("log_sum").sum(), pl.col("runs").sum()).sort("log_sum", descending=True)
    for r in families.head(3).iter_rows(named=True):
        rest = (total - r["log_sum"]) / max(n - r["runs"], 1)
        print(f"  without {r['family']}: geo regret {math.exp(rest):.3f} ({r['log_sum']:.1f} of {total:.1f} log units)")


if __name__ == "__main__":
    main()
