"""Which features tell a plateau at a workable lr from a plateau that a start too high sits on?

On a task whose loss sits at chance before it drops (sparse parities, long-range memory), a tuned run
and a run started a few times too high look alike to the loss: both sit at chance. Cutting the lr on
the first wrecks the tuned run; holding it on the second keeps the run at chance. This sweeps each
plateau family of the train and validation splits over a half-decade lr grid per base optimizer under
the constant policy (chuck watches, changes nothing), writes every observation feature at the first
``--decisions`` decisions and each run's final validation loss, and prints, per feature, how well it
separates runs above their grid's best lr from the rest (the area under the ROC curve, pooled over
decisions, with the count of plateau decisions: loss not 10% below its start), then the quantiles of the
gradient norm's coefficient of variation at plateau decisions per split, base optimizer and offset from
the grid's best lr (the figures behind lab prior version 22, experiments/prior_variants.py).

    python experiments/plateau_signals.py --out docs/results/plateau/plateau_signals.csv   # about 5 minutes
    python experiments/plateau_signals.py --read docs/results/plateau/plateau_signals.csv  # the tables again
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

import chuck
from chuck.evaluation.runs import EVAL_EVERY, init_worker, instance_config, steps_for
from chuck.zoo import get_task, loop

#: The plateau families of the train and validation splits, by split (the test split's is not read here).
SPLITS = {"train": ("tabular.sparse_parity_small_mlp", "nlp.memory_gru"), "validation": ("tabular.sparse_parity_mlp",)}
FAMILIES = tuple(f for fams in SPLITS.values() for f in fams)
GRIDS = {
    "AdamW": tuple(10.0**k for k in (-3.0, -2.5, -2.0, -1.5, -1.0)),
    "SGD": tuple(10.0**k for k in (-2.0, -1.5, -1.0, -0.5, 0.0)),
}


def run(job: tuple[str, int, str, float, int]) -> list[dict[str, Any]]:
    family, seed, base, lr, decisions = job
    task = get_task(family)
    cfg = instance_config(task, seed, base)
    cfg.lr = lr
    torch.manual_seed(cfg.seed)
    inst = task.build(cfg)
    steps = steps_for(task, 1.0)
    opt = chuck.ChuckOptimizer(inst.optimizer, policy="constant", model=inst.model, total_steps=steps, history=False)
    res = loop.train(inst, opt, steps, eval_every=EVAL_EVERY, observe=True)
    final = res.val_losses[-1] if res.val_losses else math.nan
    rows = [d for d in opt.decisions if d.source != "guardrail"][:decisions]
    return [
        {"family": family, "seed": seed, "base": base, "lr": lr, "decision": i, "final": float(final), **d.observation}
        for i, d in enumerate(rows)
    ]


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counted half: the Mann-Whitney form of the ROC area."""
    if pos.size == 0 or neg.size == 0:
        return math.nan
    gt = (pos[:, None] > neg[None, :]).mean()
    eq = (pos[:, None] == neg[None, :]).mean()
    return float(gt + 0.5 * eq)


def report(df: pl.DataFrame) -> pl.DataFrame:
    """Print the tables of the module docstring; returns the separation table (one row per feature)."""
    best = df.group_by("family", "seed", "base").agg(pl.col("lr").sort_by("final").first().alias("best"))
    df = df.join(best, on=["family", "seed", "base"]).with_columns(
        (pl.col("lr") / pl.col("best")).log10().round(1).alias("offset")
    )
    # the hold's reading of a plateau: the loss has not fallen 10% below its start (a rise counts)
    plateau = df.filter(pl.col("loss.log_ratio_initial") > math.log(0.9))
    print(f"{df.height} decisions, {plateau.height} on a plateau (loss not 10% below its start)")
    print(plateau.group_by("base", "offset").len().sort("base", "offset"))

    def separation(x: pl.DataFrame, f: str) -> float:
        """The ROC area of ``f`` for decisions half a decade or more above the best lr against those at or below it."""
        return auc(x.filter(pl.col("offset") >= 0.5)[f].to_numpy(), x.filter(pl.col("offset") <= 0.0)[f].to_numpy())

    out = []
    for f in (c for c in df.columns if "." in c):
        x = plateau.filter(pl.col(f).is_not_nan() & pl.col(f).is_not_null())
        per_base = {f"auc_{b}": separation(x.filter(pl.col("base") == b), f) for b in GRIDS}
        out.append({"feature": f, "auc": separation(x, f), **per_base})
    table = pl.DataFrame(out).with_columns((pl.col("auc") - 0.5).abs().alias("sep")).sort("sep", descending=True)
    with pl.Config(tbl_rows=25):
        print(table.head(25))
    cv = pl.col("grad.norm_cv")
    for split, fams in SPLITS.items():
        print(f"grad.norm_cv at plateau decisions, {split} split ({', '.join(fams)}), by offset from the grid's best lr:")
        q = plateau.filter(pl.col("family").is_in(fams)).group_by("base", "offset")
        q = q.agg(pl.len(), cv.quantile(0.1).alias("q10"), cv.median().alias("median"), cv.quantile(0.9).alias("q90"))
        with pl.Config(tbl_rows=40):
            print(q.sort("base", "offset"))
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/plateau_signals.csv"))
    ap.add_argument("--read", type=Path, default=None, help="print the table of an earlier sweep and stop")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--decisions", type=int, default=6)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    if args.read is not None:
        report(pl.read_csv(args.read))
        return
    jobs = [
        (fam, int(s), base, lr, args.decisions)
        for fam in FAMILIES
        for s in args.seeds.split(",")
        for base, grid in GRIDS.items()
        for lr in grid
    ]
    with mp.get_context("spawn").Pool(args.workers, initializer=init_worker) as pool:
        rows = [r for part in pool.imap_unordered(run, jobs) for r in part]
    df = pl.DataFrame(rows, infer_schema_length=None)
    df.write_csv(args.out)
    report(df)


if __name__ == "__main__":
    main()
