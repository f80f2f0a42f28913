"""What a user who tuned in hindsight reaches: reference rows read off the oracle sweep.

An evaluation's oracle is the best of a sweep (constant AdamW and AdamW + cosine at every
oracle lr, Prodigy once). The same sweep says, at no extra run, what a user would have got
who *knew* the best learning rate of the grid for each instance, and what one who missed it
by one grid step (half a decade on the default grid) would have got:

* ``tuned cosine``: AdamW + cosine at the grid lr whose cosine run ended lowest;
* ``tuned constant``: constant AdamW at the grid lr whose run ended lowest (the harm
  reference's run);
* ``cosine one lr step lower`` and ``cosine one lr step higher``: AdamW + cosine at the grid
  neighbour below and above that lr (an instance whose best lr is at the edge of the grid has
  only one of them), one run per instance each, so that every instance weighs the same.

These rows put the targets on a scale. A policy that starts from an lr decades away and never
sees the sweep competes with the first row; the first two are picked among nine runs *after*
the fact, so they also carry the selection that makes the oracle hard to match (the A/A
control of :mod:`chuck.evaluation.resolution` measures that part separately), and the third
says how precisely an lr must be found for a run to land within 10% of the oracle. A
within-10% target near the first row's share asks for a policy as good as hindsight tuning;
one above it asks for more.

Nothing here trains: every figure is a ratio of two cached sweep runs of the same instance.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from chuck.evaluation.oracle import ORACLE_LRS, OracleCache, best_of_arm, instance_key, oracle_runs, sweep_winners
from chuck.evaluation.runs import instance_config, loss_ratio, run_id, steps_for
from chuck.evaluation.stats import ArmStats, arm_stats

TUNED_COSINE = "tuned cosine"
TUNED_CONSTANT = "tuned constant"
COSINE_STEP_LOWER = "cosine one lr step lower"
COSINE_STEP_HIGHER = "cosine one lr step higher"
#: The hindsight rows, in the order they are reported.
NAMES = (TUNED_COSINE, TUNED_CONSTANT, COSINE_STEP_LOWER, COSINE_STEP_HIGHER)


def instance_rows(
    results: dict[str, dict[str, Any]], lrs: Iterable[float], task_id: str, family: str, seed: int
) -> list[dict[str, Any]]:
    """The hindsight rows of one instance, from its finished sweep ``results`` (``run_id -> result``).

    Each row is shaped like an arm's main row (``arm``, ``task_id``, ``family``, ``seed``, ``lr``, ``regret``,
    ``diverged``, ``error``), with its regret over the instance's oracle (``oracle_loss``). An instance whose every
    sweep run crashed has no oracle and gives no row.
    """
    grid = sorted(lrs)
    oracle, tuned = sweep_winners(results, tuple(grid))
    if oracle is None:
        return []
    rows = []

    def row(name: str, arm: str, k: int) -> None:
        result = results[run_id(arm, grid[k])]
        rows.append(
            {
                "arm": name,
                "task_id": task_id,
                "family": family,
                "seed": int(seed),
                "lr": grid[k],
                "oracle_loss": oracle[2],
                "regret": loss_ratio(result, oracle[2]),
                "diverged": bool(result.get("diverged")),
                "error": bool(result.get("error")),
            }
        )

    best_cosine = best_of_arm(results, "cosine", tuple(grid))
    if best_cosine is not None:
        cos = grid.index(best_cosine[0])
        row(TUNED_COSINE, "cosine", cos)
        for name, k in ((COSINE_STEP_LOWER, cos - 1), (COSINE_STEP_HIGHER, cos + 1)):
            if 0 <= k < len(grid) and run_id("cosine", grid[k]) in results:
                row(name, "cosine", k)
    if tuned is not None:  # the harm reference's run: the same choice of the best constant lr
        row(TUNED_CONSTANT, "adamw", grid.index(tuned[0]))
    return rows


def hindsight_stats(rows: list[dict[str, Any]]) -> dict[str, ArmStats]:
    """Per hindsight row name, its statistics as an arm's (median, geo-mean with intervals, within 10%)."""
    return {name: arm_stats(mine, None) for name in NAMES if (mine := [r for r in rows if r["arm"] == name])}


def rows_from_cache(
    tasks: Iterable[Any],
    seeds: Iterable[int],
    budget_scale: float = 1.0,
    oracle_lrs: tuple[float, ...] = ORACLE_LRS,
    base: str = "AdamW",
) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """The hindsight rows of every (task, seed) whose oracle sweep is cached (``$CHUCK_HOME/oracle``).

    Returns ``(rows, missing, incomplete)``: ``missing`` names the instances with no cached sweep
    (``chuck evaluate`` on them fills it); ``incomplete`` the cached ones that lack some of the sweep's
    runs, with the runs they lack. The cache keeps no crashed run, so an instance whose sweep had a crash
    stays incomplete however often it is evaluated: its rows come from the runs it has (a lacking
    neighbour gives no step row), where ``chuck evaluate`` counts the crash as regret 100. Nothing is
    trained. ``base``: the instances' base optimizer (each base has its own cached sweeps, see
    :mod:`chuck.evaluation.bases`; pass its ``oracle_lrs`` too).
    """
    rows: list[dict[str, Any]] = []
    missing: list[str] = []
    incomplete: list[str] = []
    for task in tasks:
        for seed in seeds:
            steps = steps_for(task, budget_scale)
            cache = OracleCache(instance_key(task, seed, budget_scale, steps, instance_config(task, seed, base)))
            if not cache.runs:
                missing.append(f"{task.id} seed {seed}")
                continue
            absent = [run_id(arm, lr) for arm, lr in oracle_runs(tuple(oracle_lrs)) if run_id(arm, lr) not in cache.runs]
            if absent:
                incomplete.append(f"{task.id} seed {seed} ({', '.join(absent)})")
            rows += instance_rows(cache.runs, oracle_lrs, task.id, task.family, seed)
    return rows, missing, incomplete
