"""Evaluate chuck's policies against baseline optimizers: ``chuck.evaluate.evaluate`` and ``chuck evaluate``.

    from chuck.evaluate import evaluate
    summary = evaluate(policies=["default", "heuristic"], baselines=["adamw", "prodigy"],
                       tasks="test", lrs=[1e-4, 1e-3, 1e-2, 1e-1], seeds=[0, 1, 2], workers=2, out="eval")
    summary.arms["chuck:default"].median_regret

The implementation lives in :mod:`chuck.evaluation` (definitions of regret, oracle and harm
in its module docstrings).
"""

from chuck.evaluation import (
    BASELINES,
    DEFAULT_LRS,
    DEFAULT_POLICIES,
    DEFAULT_SEEDS,
    FAILED_REGRET,
    ORACLE_LRS,
    ROW_FIELDS,
    ArmStats,
    ArmSummary,
    EvaluationInputError,
    Summary,
    evaluate,
)

__all__ = [
    "BASELINES",
    "DEFAULT_LRS",
    "DEFAULT_POLICIES",
    "DEFAULT_SEEDS",
    "FAILED_REGRET",
    "ORACLE_LRS",
    "ROW_FIELDS",
    "ArmStats",
    "ArmSummary",
    "EvaluationInputError",
    "Summary",
    "evaluate",
]
