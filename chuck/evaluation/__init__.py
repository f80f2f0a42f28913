"""``chuck evaluate``: chuck's policies against the optimizers users would pick instead.

Every arm trains the same instances (task, seed: common random numbers) from every starting
lr through the deployment path, for the task's budget. Regret is an arm's final validation
loss over the instance's *oracle*, the best over an lr sweep (constant AdamW and AdamW +
cosine at nine half-decade lrs, Prodigy once): 1.0 matches what a user gets from the sweep,
below 1.0 beats it. Harm is measured at the instance's best constant lr: the arm's final
loss over constant AdamW's there. Diverged and crashed runs count as regret 100. With
``base_optimizers`` other than AdamW, each base is its own set of instances, swept and reported
on its own as well as pooled (:mod:`chuck.evaluation.bases`).

* :mod:`chuck.evaluation.runs`: the arms and the one-run worker.
* :mod:`chuck.evaluation.bases`: the base optimizers and their default lr grids.
* :mod:`chuck.evaluation.oracle`: the sweep and its on-disk cache.
* :mod:`chuck.evaluation.stats`: statistics, bootstrap intervals, the plot.
* :mod:`chuck.evaluation.identity`: which policy an arm's rows were measured with (resuming).
* :mod:`chuck.evaluation.runner`: planning, the worker pool, resumable rows, :func:`evaluate`.

The public entry point is :func:`chuck.evaluation.evaluate` (and ``chuck evaluate``).
"""

from chuck.evaluation.bases import DEFAULT_LRS, LR_SHIFT
from chuck.evaluation.oracle import ORACLE_LRS
from chuck.evaluation.runner import DEFAULT_POLICIES, DEFAULT_SEEDS, ROW_FIELDS, EvaluationInputError, evaluate
from chuck.evaluation.runs import BASELINES, FAILED_REGRET
from chuck.evaluation.stats import ArmStats, ArmSummary, Summary

__all__ = [
    "BASELINES",
    "DEFAULT_LRS",
    "DEFAULT_POLICIES",
    "DEFAULT_SEEDS",
    "FAILED_REGRET",
    "LR_SHIFT",
    "ORACLE_LRS",
    "ROW_FIELDS",
    "ArmStats",
    "ArmSummary",
    "EvaluationInputError",
    "Summary",
    "evaluate",
]
