"""Paired comparison of two arms of a `chuck evaluate` run: same instances, same starting lrs.

The summary's intervals are per arm; two arms run on the same instances differ far less than
those intervals suggest, so an ablation is read off the paired ratio instead: the geometric mean
over runs of regret(B) / regret(A) on the same instance and starting lr, with a 95% bootstrap
interval that resamples instances (family, seed) because runs of one instance are correlated.
Also per starting lr and per family (is a gain broad, or one family's?), and the harm-at-the-tuned-lr
shares of both arms.

Rows of one directory written on different machines can hold different oracles for an instance: the
sweep is re-run where its cache is missing, and chaotic tasks (an A2C on CartPole, losses near 1e-6)
end elsewhere from the same seed under other float rounding. Regrets against different oracles are not
comparable, so B's regrets are rescaled to A's oracle (final loss / A's oracle; failed runs keep their
cap), and the harm shares are also given over the probes both arms ran at the same lr.

    python experiments/paired_regret.py docs/results/test_v10/rows.csv prodigy chuck:default
    python experiments/paired_regret.py ROWS A B --seeds 0,1,2     # only these instance seeds
    python experiments/paired_regret.py ROWS A B --base SGD        # one base optimizer's instances (default: AdamW)
    python experiments/paired_regret.py ROWS A B --exclude-family cv.textures_resnet   # without one family
    python experiments/paired_regret.py docs/results/test_v10/rows.csv chuck:default chuck:default \
        --a-rows OTHER_DIR/rows.csv   # the same arm name in two directories: two defaults
    python experiments/paired_regret.py ROWS A B --resolvable docs/results/resolution_validation.json
        # only instances the benchmark resolves: every A/A replay of both references within 5%
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import polars as pl

#: What the comparison reads from a rows.csv (older and newer `chuck evaluate` versions agree on these).
COLUMNS = ["kind", "arm", "family", "seed", "lr", "oracle_loss", "regret", "harm"]


def check_shared_instances(rows: pl.DataFrame, other: pl.DataFrame, where: str) -> None:
    """Refuse to pair two directories with no instance (family, seed) in common. A differing oracle
    on an instance is fine: regrets are rescaled to arm A's oracle (``on_common_oracle``)."""
    key = ["family", "seed"]
    if rows.select(key).unique().join(other.select(key).unique(), on=key).is_empty():
        raise SystemExit(f"{where} shares no instance (family, seed) with the rows compared")


#: The regret a failed (diverged or crashed) run is given (chuck.evaluation.stats): kept as it is on rescaling.
FAILED_REGRET = 100.0


def resolvable_instances(path: str, tolerance: float) -> pl.DataFrame:
    """(family, seed) of the instances whose A/A replays (experiments/benchmark_resolution.py) of both the
    oracle and the tuned-lr reference all ended within ``tolerance`` of their reference: where a regret
    or harm ratio measures the arm rather than the run's chaos."""
    with open(path) as f:
        replays = json.load(f)["rows"]
    spread: dict[tuple[str, int], float] = {}
    for r in replays:
        key = (str(r["family"]), int(r["seed"]))
        spread[key] = max(spread.get(key, 0.0), abs(float(np.log(r["ratio"]))))
    keep = [k for k, v in spread.items() if v <= np.log1p(tolerance)]
    return pl.DataFrame(
        {"family": [k[0] for k in keep], "seed": [k[1] for k in keep]}, schema={"family": pl.String, "seed": pl.Int64}
    )


def on_common_oracle(rows: pl.DataFrame, a: str) -> tuple[pl.DataFrame, int]:
    """Every arm's regrets against arm ``a``'s oracle of each instance, and how many instances needed it."""
    key = ["family", "seed"]
    ref = rows.filter(pl.col("arm") == a).group_by(key).agg(pl.col("oracle_loss").first().alias("ref"))
    out = rows.join(ref, on=key, how="left").with_columns(pl.col("ref").fill_null(pl.col("oracle_loss")))
    moved = out.filter((pl.col("oracle_loss") - pl.col("ref")).abs() > 1e-9 * pl.col("ref").abs().clip(lower_bound=1e-30))
    out = out.with_columns(
        pl.when(pl.col("regret") >= FAILED_REGRET)
        .then(pl.col("regret"))
        .otherwise(pl.col("regret") * pl.col("oracle_loss") / pl.col("ref"))
        .alias("regret")
    ).drop("ref")
    return out, moved.select(key).unique().height


def arm_figures(rows: pl.DataFrame, arm: str) -> dict[str, float]:
    """Median and geometric-mean regret and the share within 10% of the oracle, over an arm's main runs."""
    r = rows.filter((pl.col("kind") == "main") & (pl.col("arm") == arm))["regret"].to_numpy()
    return {
        "runs": int(r.size),
        "median": float(np.median(r)),
        "geo": float(np.exp(np.log(r).mean())),
        "within": float((r <= 1.1).mean()),
    }


def common_probes(rows: pl.DataFrame, a: str, b: str) -> pl.DataFrame:
    """The harm probes of ``a`` and ``b`` on instances where both probed the same lr."""
    probes = rows.filter((pl.col("kind") == "harm_probe") & pl.col("arm").is_in([a, b]))
    lrs = probes.group_by(["family", "seed"]).agg(pl.col("lr").n_unique().alias("n"), pl.col("arm").n_unique().alias("arms"))
    same = lrs.filter((pl.col("n") == 1) & (pl.col("arms") == 2)).select("family", "seed")
    return probes.join(same, on=["family", "seed"])


def paired(rows: pl.DataFrame, a: str, b: str, resamples: int = 4000, seed: int = 0) -> dict[str, object]:
    """Paired geo ratio of ``b`` over ``a`` on the main runs, its bootstrap interval, and the same per lr."""
    main = rows.filter(pl.col("kind") == "main")
    wide = main.filter(pl.col("arm").is_in([a, b])).pivot(on="arm", index=["family", "seed", "lr"], values="regret").drop_nulls()
    if wide.is_empty():
        raise SystemExit(f"no runs where both {a!r} and {b!r} have a regret")
    wide = wide.with_columns((pl.col(b).log() - pl.col(a).log()).alias("d"))
    per_instance = wide.group_by(["family", "seed"]).agg(pl.col("d").sum().alias("s"), pl.len().alias("n")).sort("family", "seed")
    s, n = per_instance["s"].to_numpy(), per_instance["n"].to_numpy()
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, len(s), len(s)) for _ in range(resamples)]
    boot = np.array([np.exp(s[i].sum() / n[i].sum()) for i in draws])
    by_lr = wide.group_by("lr").agg(pl.col("d").mean().exp().alias("ratio"), pl.len().alias("runs")).sort("lr")
    by_family = wide.group_by("family").agg(pl.col("d").mean().exp().alias("ratio")).sort("family")
    return {
        "ratio": float(np.exp(s.sum() / n.sum())),
        "ci": (float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))),
        "runs": int(n.sum()),
        "better": int((wide["d"] < 0).sum()),
        "worse": int((wide["d"] > 0).sum()),
        "by_lr": {float(r["lr"]): float(r["ratio"]) for r in by_lr.iter_rows(named=True)},
        "by_family": {str(r["family"]): float(r["ratio"]) for r in by_family.iter_rows(named=True)},
    }


def harm_shares(rows: pl.DataFrame, arms: list[str]) -> dict[str, dict[str, float]]:
    """Per arm, over the runs started at the instance's best constant lr: the share more than 5% and
    more than 20% worse than constant AdamW there (the policy issue's harm target), and the worst."""
    probes = rows.filter((pl.col("kind") == "harm_probe") & pl.col("arm").is_in(arms) & pl.col("harm").is_not_null())
    out = {}
    for arm in arms:
        h = probes.filter(pl.col("arm") == arm)["harm"].to_numpy()
        if h.size:
            out[arm] = {
                "runs": int(h.size),
                "over_1.05": float((h > 1.05).mean()),
                "over_1.2": float((h > 1.2).mean()),
                "worst": float(h.max()),
            }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rows", help="a chuck evaluate rows.csv")
    ap.add_argument("a", help="the reference arm, e.g. chuck:prior@3")
    ap.add_argument("b", help="the arm compared with it")
    ap.add_argument("--seeds", help="comma-separated instance seeds to keep (default: all)")
    ap.add_argument(
        "--a-rows",
        help="read arm A from this rows.csv instead (same instances and oracle, e.g. an earlier default's "
        "directory); it is then reported as 'A [PATH]'",
    )
    ap.add_argument("--exclude-family", action="append", default=[], help="leave this family out (repeatable)")
    ap.add_argument("--resolvable", help="a resolution JSON: keep only the instances whose A/A replays stay within --tolerance")
    ap.add_argument("--tolerance", type=float, default=0.05, help="for --resolvable (default: %(default)s)")
    ap.add_argument(
        "--base",
        default="AdamW",
        help="the base optimizer whose instances are compared (rows.csv's base column; default: %(default)s)",
    )
    args = ap.parse_args()

    def read(path: str) -> pl.DataFrame:
        """The rows of one base optimizer (rows written before the base column are AdamW's)."""
        frame = pl.read_csv(path)
        if "base" in frame.columns:
            frame = frame.filter(pl.col("base") == args.base)
        elif args.base != "AdamW":
            raise SystemExit(f"{path} has no base column: its rows are AdamW's")
        return frame.select(COLUMNS)

    rows = read(args.rows)
    unknown = set(args.exclude_family) - set(rows["family"].unique().to_list())
    if unknown:
        raise SystemExit(f"no runs of {sorted(unknown)} in {args.rows}")
    if args.a_rows:
        other = read(args.a_rows).filter(pl.col("arm") == args.a)
        if other.is_empty():
            raise SystemExit(f"no rows of arm {args.a!r} in {args.a_rows}")
        check_shared_instances(rows, other, args.a_rows)
        args.a = f"{args.a} [{args.a_rows}]"
        rows = pl.concat([rows, other.with_columns(pl.lit(args.a).alias("arm"))], how="vertical_relaxed")
    if args.exclude_family:  # after --a-rows joined: arm A's harm shares leave the family out too
        rows = rows.filter(~pl.col("family").is_in(args.exclude_family))
    if args.seeds:
        rows = rows.filter(pl.col("seed").is_in([int(x) for x in args.seeds.split(",")]))
    if args.resolvable:
        keep = resolvable_instances(args.resolvable, args.tolerance)
        total = rows.select("family", "seed").unique().height
        rows = rows.with_columns(pl.col("seed").cast(pl.Int64)).join(keep, on=["family", "seed"])
        kept = rows.select("family", "seed").unique().height
        print(f"resolvable instances (A/A within {args.tolerance:.0%}): {kept} of {total}")
    rows, moved = on_common_oracle(rows, args.a)
    if moved:
        print(f"note: {moved} instances hold another oracle in some rows than in {args.a}'s; regrets rescaled to {args.a}'s")
    r = paired(rows, args.a, args.b)
    lo, hi = r["ci"]  # type: ignore[misc]
    print(
        f"{args.b} / {args.a}: paired geo ratio {r['ratio']:.3f} [{lo:.3f}, {hi:.3f}] over {r['runs']} runs "
        f"(better in {r['better']}, worse in {r['worse']})"
    )
    print("by starting lr: " + ", ".join(f"{lr:g}: {v:.3f}" for lr, v in r["by_lr"].items()))  # type: ignore[attr-defined]
    print("by family: " + ", ".join(f"{f}: {v:.2f}" for f, v in r["by_family"].items()))  # type: ignore[attr-defined]
    for arm, h in harm_shares(rows, [args.a, args.b]).items():
        print(
            f"harm at the tuned lr, {arm}: {h['over_1.05']:.0%} of {h['runs']} runs > 1.05, {h['over_1.2']:.0%} > 1.2, worst {h['worst']:.3g}"
        )
    if moved or args.resolvable:
        for arm in (args.a, args.b):
            f = arm_figures(rows, arm)
            print(
                f"  on {args.a}'s oracle{' (resolvable instances)' if args.resolvable else ''}, {arm}: median {f['median']:.3f}, geo {f['geo']:.3f}, "
                f"within 10% {f['within']:.0%} ({f['runs']} runs)"
            )
    if moved:
        for arm, h in harm_shares(common_probes(rows, args.a, args.b), [args.a, args.b]).items():
            print(
                f"  on the {h['runs']} probes both ran at the same lr, {arm}: {h['over_1.05']:.0%} > 1.05, "
                f"{h['over_1.2']:.0%} > 1.2, worst {h['worst']:.3g}"
            )


if __name__ == "__main__":
    main()
