"""Measure each family's best constant learning rate and cache it in ``best_lr.json``.

For every family: a few fixed instances (``Task.sample_config`` with seeds 0, 1, ...,
then the base optimizer forced to AdamW, everything else as drawn), each trained
for the family's full budget at every lr of a half-decade grid (1e-5 ... 1 by
default) through :func:`chuck.zoo.loop.train` with an evaluation every 20 steps.
Each run's result is ``log(min(L_final / L_start, 10))`` (a diverged run counts as
10x its starting loss), so instances whose losses live at different scales weigh
alike. The score of an lr is the *median* over instances, then averaged with its
grid neighbours (weights 1/4, 1/2, 1/4): one lucky run (an RL agent that happens to
solve CartPole drives its regret to the 1e-3 floor, log = -6.9) must not make a
spike the optimum. The best lr is the smoothed argmin, refined by the vertex of a
parabola through it and its two neighbours (in log10 lr, moved at most a quarter
decade: the grid spacing bounds what the data can say). The raw per-run log ratios
are kept in the file, so another scoring can be applied without rerunning.

Each entry is keyed by the family's :attr:`~chuck.zoo.task.Task.calibration_key`
(a hash of its budget and search space): change either and the entry goes stale.

Run it with one thread per process (the zoo's episodes are small; more threads only
contend)::

    python -m chuck.zoo.calibrate                       # every family whose entry is missing or stale
    python -m chuck.zoo.calibrate --all                 # every family, again
    python -m chuck.zoo.calibrate --tasks cv.digits_mlp,domain:rl
    python -m chuck.zoo.calibrate --optimizer SGD --output /tmp/sgd.json   # per-optimizer offsets
    python -m chuck.zoo.calibrate --tasks-module my_pkg.tasks --tasks custom   # your in-house tasks

In-house tasks (the ``custom`` split) are written to ``$CHUCK_HOME/best_lr.json`` unless ``--output``
says otherwise: every chuck process with that CHUCK_HOME reads it after the package's own file
(a task can instead declare ``best_lr`` on its class: the value printed at the end).

The per-optimizer offsets of :data:`chuck.zoo.starting_lr.OPTIMIZER_LR_OFFSET` come from
runs of the last form, compared with the AdamW cache (``--compare``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from chuck.zoo import loop
from chuck.zoo.registry import import_task_modules, list_tasks, resolve_tasks, split_of
from chuck.zoo.starting_lr import CACHE_PATH, REFERENCE_OPTIMIZER, cache_entry, reload_cache, user_cache_path
from chuck.zoo.task import Task

#: Half-decade grid from 1e-5 to 1.
DEFAULT_LRS = tuple(float(f"{10 ** (e / 2):.3g}") for e in range(-10, 1))
DEFAULT_INSTANCES = 3
EVAL_EVERY = 20
#: A run whose final loss is not finite, or above this multiple of its start, scores as this multiple.
WORST_RATIO = 10.0


def run_once(task: Task, seed: int, optimizer: str, lr: float, steps: int | None = None) -> tuple[float, float, float]:
    """Train one fixed instance at a constant lr: (starting val loss, final val loss, seconds)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the lr drawn here is overwritten: a stale entry does not matter
        cfg = task.sample_config(np.random.default_rng(seed))
    cfg.optimizer, cfg.lr, cfg.lr_regime = optimizer, lr, ""
    t0 = time.perf_counter()
    inst = task.build(cfg)
    start = loop.evaluate(inst)
    res = loop.train(inst, inst.optimizer, steps or task.budget, eval_every=EVAL_EVERY)
    final = res.val_losses[-1] if res.val_losses and res.calls % EVAL_EVERY == 0 else loop.evaluate(inst)
    return start, final, time.perf_counter() - t0


def score(start: float, final: float) -> float:
    if not (math.isfinite(start) and math.isfinite(final)) or start <= 0:
        return math.log(WORST_RATIO)
    return math.log(min(max(final, 1e-12) / start, WORST_RATIO))


def smoothed_scores(log_ratios: list[list[float]]) -> list[float]:
    """Per lr (rows), the median over instances (columns), then a [1/4, 1/2, 1/4] average with the neighbours."""
    med = np.median(np.asarray(log_ratios, dtype=float), axis=1)
    padded = np.concatenate([[np.nan], med, [np.nan]])
    out = []
    for i in range(1, len(padded) - 1):
        w = np.array([0.25, 0.5, 0.25])
        v = padded[i - 1 : i + 2]
        ok = np.isfinite(v)
        out.append(float((w[ok] * v[ok]).sum() / w[ok].sum()))
    return out


def refine(lrs: list[float], scores: list[float]) -> float:
    """The grid argmin, moved to the vertex of the parabola through it and its neighbours (in log10 lr)."""
    i = int(np.argmin(scores))
    x = math.log10(lrs[i])
    if 0 < i < len(lrs) - 1:
        xs = np.log10([lrs[i - 1], lrs[i], lrs[i + 1]])
        a, b, _ = np.polyfit(xs, [scores[i - 1], scores[i], scores[i + 1]], 2)
        if a > 0:
            step = min(xs[2] - xs[1], xs[1] - xs[0]) / 2
            x = float(np.clip(-b / (2 * a), x - step, x + step))
    return float(f"{10**x:.3g}")


def calibrate_task(task: Task, lrs: list[float], instances: int, optimizer: str, log=print) -> dict[str, Any]:
    """Sweep one family; the cache entry (with the smoothed scores and raw log ratios, for inspection)."""
    log_ratios, seconds = [], []
    for lr in lrs:
        per = []
        for seed in range(instances):
            start, final, sec = run_once(task, seed, optimizer, lr)
            per.append(round(score(start, final), 4))
            seconds.append(sec)
        log_ratios.append(per)
        log(f"  {task.id} lr={lr:.0e} log ratios={per} ({np.mean(seconds[-instances:]):.2f}s/episode)")
    scores = smoothed_scores(log_ratios)
    return {
        "key": task.calibration_key,
        "budget": task.budget,
        "best_lr": refine(lrs, scores),
        "grid_best_lr": lrs[int(np.argmin(scores))],
        "scores": [round(s, 4) for s in scores],
        "log_ratios": log_ratios,
        "seconds_per_episode": round(float(np.median(seconds)), 3),  # median: the first run pays imports
    }


def _write(path: Path, protocol: dict[str, Any], tasks: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    # one line per family entry: diffs of a recalibration stay readable
    lines = [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(tasks.items())]
    text = '{\n "protocol": ' + json.dumps(protocol) + ',\n "tasks": {\n' + ",\n".join(lines) + "\n }\n}\n"
    tmp.write_text(text)
    os.replace(tmp, path)  # atomic: a reader never sees half a file


def compare(path: Path, reference: Path = CACHE_PATH) -> dict[str, float]:
    """log10(best lr in ``path`` / best lr in ``reference``) per family present in both with the same key."""
    a = json.loads(Path(path).read_text())["tasks"]
    b = json.loads(Path(reference).read_text())["tasks"]
    return {
        t: round(math.log10(a[t]["best_lr"] / b[t]["best_lr"]), 3) for t in sorted(set(a) & set(b)) if a[t]["key"] == b[t]["key"]
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m chuck.zoo.calibrate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default=None, help="task spec (ids, splits, domain:X); default: every built-in family")
    ap.add_argument("--all", action="store_true", help="recompute entries that are still fresh too")
    ap.add_argument("--instances", type=int, default=DEFAULT_INSTANCES)
    ap.add_argument("--lrs", default=",".join(f"{lr:g}" for lr in DEFAULT_LRS))
    ap.add_argument("--optimizer", default=REFERENCE_OPTIMIZER)
    ap.add_argument(
        "--output",
        type=Path,
        default=None,
        help="where the entries go (default: $CHUCK_HOME/best_lr.json when in-house tasks are selected, "
        "else the package's best_lr.json)",
    )
    ap.add_argument("--tasks-module", default="", help="modules that register in-house tasks, comma-separated")
    ap.add_argument("--compare", type=Path, default=None, help="print the offsets of this file vs the AdamW cache")
    args = ap.parse_args(argv)
    if args.compare is not None:
        offsets = compare(args.compare)
        for t, d in offsets.items():
            print(f"{t:40s} {d:+.2f} decades")
        if offsets:
            print(f"median offset: {float(np.median(list(offsets.values()))):+.2f} decades over {len(offsets)} families")
        return 0
    torch.set_num_threads(1)
    import_task_modules([m.strip() for m in args.tasks_module.split(",") if m.strip()])
    tasks = (
        resolve_tasks(args.tasks)
        if args.tasks
        else resolve_tasks([t for s in ("train", "validation", "test") for t in list_tasks(s)])
    )
    lrs = [float(x) for x in args.lrs.split(",")]
    protocol = {
        "optimizer": args.optimizer,
        "instances": args.instances,
        "lrs": lrs,
        "eval_every": EVAL_EVERY,
        "score": f"median over instances of log(min(final/start val loss, {WORST_RATIO:g})), "
        "then [1/4, 1/2, 1/4]-smoothed over the lr grid",
    }
    if args.output is None:
        in_house = any(split_of(t.id) == "custom" for t in tasks)
        args.output = (user_cache_path() or CACHE_PATH) if in_house else CACHE_PATH
    existing: dict[str, Any] = {}
    if args.output.exists():
        existing = json.loads(args.output.read_text()).get("tasks", {})
    for i, task in enumerate(tasks, 1):
        fresh = cache_entry(task.id, task.calibration_key, args.output) is not None
        if fresh and not args.all:
            print(f"[{i}/{len(tasks)}] {task.id}: fresh, skipped", flush=True)
            continue
        print(f"[{i}/{len(tasks)}] {task.id} (budget {task.budget})", flush=True)
        t0 = time.perf_counter()
        existing[task.id] = calibrate_task(task, lrs, args.instances, args.optimizer, log=lambda m: print(m, flush=True))
        _write(args.output, protocol, existing)
        reload_cache()
        print(
            f"[{i}/{len(tasks)}] {task.id}: best lr {existing[task.id]['best_lr']:g} ({time.perf_counter() - t0:.0f}s)",
            flush=True,
        )
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
