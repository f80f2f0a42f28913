"""The oracle: what a user gets from an lr sweep, cached on disk per instance.

For each instance, the oracle loss is the best final validation loss over a dense sweep:
constant AdamW and AdamW + cosine at every lr of ``ORACLE_LRS`` (nine half-decades,
1e-5 .. 1e-1), plus Prodigy once at its recommended ``lr=1.0``. Prodigy's lr multiplies
the step size it estimates itself; sweeping that multiplier would make it a tuned
optimizer rather than the lr-free one users pick it for, and would add nine runs per
instance, so it runs once. Regret = final loss / oracle loss: 1.0 matches the sweep,
below 1.0 beats it.

The *best constant lr* (argmin over the constant-AdamW runs) is the lr a user who tuned
would train at; harm is measured there.

The sweep's runs are cached in ``$CHUCK_HOME/oracle/<task>-s<seed>-<hash>.json``, one
file per instance, keyed by a hash of the task id, seed, the task's budget, the budget
scale, the steps, the sampled config, the task's class and the zoo's version (if either
declares one). Changing any of these (a task's budget, say) selects another file; runs
that crashed are not cached (they are retried next time).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import chuck.zoo
from chuck.core.home import chuck_home
from chuck.evaluation.runs import EVAL_EVERY, effective_loss, run_id

#: Nine half-decade learning rates, 1e-5 .. 1e-1 (rounded to 3 digits: 1e-5, 3.16e-5, ...).
ORACLE_LRS: tuple[float, ...] = tuple(float(f"{10 ** (-5 + k / 2):.3g}") for k in range(9))
#: The constant-lr arms swept over ``ORACLE_LRS`` (Prodigy runs once on top).
SWEEP_ARMS = ("adamw", "cosine")


def oracle_runs(lrs: tuple[float, ...]) -> list[tuple[str, float]]:
    """(arm, lr) of every run of the sweep."""
    return [(arm, lr) for arm in SWEEP_ARMS for lr in lrs] + [("prodigy", 1.0)]


def cache_dir() -> Path:

    path = chuck_home() / "oracle"
    path.mkdir(parents=True, exist_ok=True)
    return path


def instance_key(task: Any, seed: int, budget_scale: float, steps: int, config: Any) -> dict[str, Any]:
    """What an instance's oracle depends on (hashed into the cache file name)."""

    cfg = config.as_dict()
    cfg.pop("lr", None)  # set per run
    return {
        "task_id": task.id,
        "task_class": f"{type(task).__module__}.{type(task).__qualname__}",
        "task_version": getattr(task, "version", None),
        "zoo_version": getattr(chuck.zoo, "__version__", None),
        "seed": int(seed),
        "budget": int(task.budget),
        "budget_scale": float(budget_scale),
        "steps": int(steps),
        "eval_every": EVAL_EVERY,
        "config": cfg,
    }


class OracleCache:
    """The cached sweep runs of one instance: ``run_id -> result``."""

    def __init__(self, key: dict[str, Any]) -> None:
        self.key = key
        blob = json.dumps(key, sort_keys=True, default=str).encode()
        digest = hashlib.sha256(blob).hexdigest()[:16]
        safe_id = "".join(c if c.isalnum() or c in "._-" else "_" for c in key["task_id"])
        self.path = cache_dir() / f"{safe_id}-s{key['seed']}-{digest}.json"
        self.runs: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text())
                if data.get("key") == json.loads(blob):
                    self.runs = dict(data.get("runs", {}))
            except (OSError, ValueError):
                self.runs = {}  # unreadable cache: recompute

    def add(self, rid: str, result: dict[str, Any]) -> None:
        """Record a finished sweep run and rewrite the file atomically (crashes are not kept)."""
        if result.get("error"):
            return
        self.runs[rid] = {k: result[k] for k in ("final_loss", "initial_loss", "loss_reference", "diverged", "seconds")}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".oracle-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump({"key": self.key, "runs": self.runs}, f, indent=1, sort_keys=True, default=str)
        os.replace(tmp, self.path)


def sweep_winners(
    results: dict[str, dict[str, Any]], lrs: tuple[float, ...]
) -> tuple[tuple[str, float, float] | None, tuple[float, float] | None]:
    """The sweep's winning runs: ``(arm, lr, loss)`` of the lowest effective loss (the oracle) and
    ``(lr, loss)`` of the best constant-AdamW run (the tuned lr, ties to the lower lr).

    A diverged run counts at its divergence cap, a crashed one not at all; ``None`` where every
    candidate crashed.
    """
    losses = {(a, lr): effective_loss(results[run_id(a, lr)]) for a, lr in oracle_runs(lrs) if run_id(a, lr) in results}
    finite = [(k, v) for k, v in losses.items() if math.isfinite(v)]
    oracle = None
    if finite:
        (arm, lr), loss = min(finite, key=lambda kv: kv[1])
        oracle = (arm, lr, loss)
    return oracle, best_of_arm(results, "adamw", lrs)


def best_of_arm(results: dict[str, dict[str, Any]], arm: str, lrs: tuple[float, ...]) -> tuple[float, float] | None:
    """``(lr, loss)`` of ``arm``'s run with the lowest effective loss among ``lrs`` (ties to the lower lr);
    ``None`` when every one of its runs crashed or is missing."""
    runs = [(effective_loss(results[run_id(arm, lr)]), lr) for lr in lrs if run_id(arm, lr) in results]
    finite = [(v, lr) for v, lr in runs if math.isfinite(v)]
    if not finite:
        return None
    loss, lr = min(finite)
    return lr, loss


def oracle_of(results: dict[str, dict[str, Any]], lrs: tuple[float, ...]) -> tuple[float, float | None]:
    """(oracle loss, best constant lr) from an instance's finished sweep runs (:func:`sweep_winners`):
    ``nan`` when every sweep run crashed, ``None`` when every constant-AdamW run crashed."""
    oracle, tuned = sweep_winners(results, lrs)
    return (oracle[2] if oracle else math.nan), (tuned[0] if tuned else None)
