"""The retrained policy against its start and against holding, paired on held-out instances.

These are the figures ``chuck train-policy`` ends with, the card's ``comparison`` and the MLflow
run's ``compare.*`` metrics. Each held-out instance (a task and a seed: the same initialization,
data subset, batch order and starting lr for every arm) is trained once under each arm. An
episode's return is ``log(L_start / L_end)`` with the same ``L_start`` for every arm, so the
difference of two arms' returns on one instance is the log of the ratio of their final validation
losses (a diverged episode returns ``-1``: it counts as ending at e times its starting loss).

The summary of a comparison is the geometric mean of that ratio (the policy's final loss over the
other arm's) across the instances, with a 95% percentile-bootstrap interval over instances
(:func:`chuck.evaluation.stats.bootstrap_ci`, fixed seed), and how many instances it ended lower on.
The verdict: ``"better"`` when the whole interval is below 1, ``"worse"`` when it is above 1, else
``"no clear difference"`` (more held-out instances, ``--eval-episodes``, narrow the interval).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from chuck.evaluation.stats import bootstrap_ci, geomean

#: The verdicts of a comparison, by where its interval lies.
VERDICTS = ("better", "worse", "no clear difference")


def paired_ratio(
    policy_rows: Sequence[dict[str, Any]], other_rows: Sequence[dict[str, Any]], tasks: Sequence[str] = ()
) -> dict[str, Any] | None:
    """The policy's final validation loss over the other arm's, paired by (task, seed), on ``tasks`` (all if empty).

    Returns ``None`` when no instance pairs up; else ``instances``, ``tasks``, ``loss_ratio`` (geometric
    mean), ``interval`` (95% bootstrap), ``lower_on`` (instances where the policy ended lower),
    ``verdict`` and ``fallback_share`` of each arm (decisions the out-of-distribution check handed to
    the heuristic).
    """

    other = {(r["task_id"], int(r["seed"])): r for r in other_rows}
    pairs = [
        (r, other[(r["task_id"], int(r["seed"]))])
        for r in policy_rows
        if (r["task_id"], int(r["seed"])) in other and (not tasks or r["task_id"] in tasks)
    ]
    if not pairs:
        return None
    ratios = np.array([math.exp(float(b["return"]) - float(a["return"])) for a, b in pairs])
    point = float(geomean(ratios))
    lo, hi = bootstrap_ci(ratios, geomean, point) if len(ratios) > 1 else (point, point)
    verdict = VERDICTS[0] if hi < 1.0 else VERDICTS[1] if lo > 1.0 else VERDICTS[2]
    return {
        "instances": len(pairs),
        "tasks": sorted({a["task_id"] for a, _ in pairs}),
        "seeds": [int(a["seed"]) for a, _ in pairs],
        "loss_ratio": point,
        "interval": [lo, hi],
        "lower_on": int(np.sum(ratios < 1.0)),
        "verdict": verdict,
        "fallback_share": [_fallback_share([a for a, _ in pairs]), _fallback_share([b for _, b in pairs])],
    }


def _fallback_share(rows: Sequence[dict[str, Any]]) -> float:
    decisions = sum(int(r.get("decisions", 0)) for r in rows)
    return sum(int(r.get("fallbacks", 0)) for r in rows) / decisions if decisions else 0.0


def compare_arms(
    policy_rows: Sequence[dict[str, Any]],
    reference_rows: Sequence[dict[str, Any]],
    constant_rows: Sequence[dict[str, Any]],
    *,
    in_house: Sequence[str] = (),
    reference: str | None = None,
) -> dict[str, Any]:
    """The final policy against the starting policy (``reference``, when fine-tuning) and the constant one.

    On the in-house tasks' instances when there are any (``in_house``: what the user retrained for), on
    every held-out instance otherwise. ``{"reference": name, "start": paired_ratio | None, "constant":
    paired_ratio | None}``.
    """
    held = [r for r in policy_rows if r["task_id"] in in_house] if in_house else list(policy_rows)
    tasks = sorted({r["task_id"] for r in held})
    return {
        "reference": reference,
        "start": paired_ratio(held, reference_rows, tasks) if reference and reference_rows else None,
        "constant": paired_ratio(held, constant_rows, tasks) if constant_rows else None,
    }


def _ratio_text(c: dict[str, Any]) -> str:
    lo, hi = c["interval"]
    return f"{c['loss_ratio']:.3f} [{lo:.3f}, {hi:.3f}], lower on {c['lower_on']} of {c['instances']}"


def summary_lines(comparison: dict[str, Any], registered: str = "", heldout_seeds: Sequence[int] = ()) -> list[str]:
    """The figures ``chuck train-policy`` ends with, in words: what was compared on which instances, the
    paired ratios with their intervals, the fallback shares and a one-line verdict with what to do."""
    start, constant, name = comparison.get("start"), comparison.get("constant"), comparison.get("reference")
    first = start or constant
    if first is None:
        return []
    seeds = f"seeds {min(heldout_seeds)}-{max(heldout_seeds)}; " if heldout_seeds else ""
    lines = [
        f"held-out: {first['instances']} instances of {', '.join(first['tasks'])} ({seeds}no training environment is "
        "seeded with them)",
        "final validation loss, retrained / other arm, paired: geometric mean [95% bootstrap interval]",
    ]
    arms = ([(f"vs the start ({name})", start)] if start is not None else []) + (
        [("vs constant (hold)", constant)] if constant is not None else []
    )
    width = max(len(label) for label, _ in arms) + 1
    lines += [f"  {label + ':':<{width}} {_ratio_text(c)}" for label, c in arms]
    if start is not None:
        lines.append(
            f"  out-of-distribution fallbacks: retrained {start['fallback_share'][0]:.0%} of decisions, "
            f"the start {start['fallback_share'][1]:.0%}"
        )
        use = f": use {registered}" if registered else ""
        verdict = {
            "better": f"verdict: the retrained policy beats {name} on these tasks{use}",
            "worse": f"verdict: the retrained policy is worse than {name} on these tasks: keep {name}",
            "no clear difference": (
                f"verdict: no clear difference from {name} on these tasks (the interval holds 1): keep {name}; "
                "more --timesteps and --eval-episodes narrow the interval"
            ),
        }[start["verdict"]]
        lines.append(verdict)
    return lines
