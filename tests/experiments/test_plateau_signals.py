"""experiments/plateau_signals.py: the separation measure and the tables it prints."""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from experiments.plateau_signals import SPLITS, auc, report


def test_auc_is_the_share_of_pairs_ordered_ties_counted_half() -> None:
    assert auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert auc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0
    assert auc(np.array([1.0]), np.array([1.0])) == 0.5
    assert auc(np.array([2.0, 0.0]), np.array([1.0])) == 0.5
    assert math.isnan(auc(np.array([]), np.array([1.0])))


def test_report_separates_a_feature_that_rises_above_the_best_lr(capsys) -> None:
    rows = []
    for family in SPLITS["train"]:
        for base in ("AdamW", "SGD"):
            for k, lr in enumerate((1e-3, 1e-2, 1e-1)):
                final = (1.0, 0.1, 0.5)[k]  # the middle lr is the grid's best
                for d in range(3):
                    rows.append(
                        {"family": family, "seed": 0, "base": base, "lr": lr, "decision": d, "final": final}
                        | {"loss.log_ratio_initial": 0.0, "grad.norm_cv": 0.1 + k + 0.01 * d, "step.hypergrad": 0.0}
                    )
    table = report(pl.DataFrame(rows))
    assert "36 decisions, 36 on a plateau" in capsys.readouterr().out
    aucs = dict(zip(table["feature"], table["auc"]))
    assert aucs["grad.norm_cv"] == 1.0  # above the best lr every decision reads higher
    assert aucs["step.hypergrad"] == 0.5  # the same everywhere: no separation
