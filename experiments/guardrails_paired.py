"""The default policy's runs of a ``chuck evaluate`` rows.csv, rerun with the code as it is now, paired.

Recomputing regret needs the instances' lr-sweep oracle; a *paired* comparison does not: every
``chuck:default`` run of an earlier ``rows.csv`` (same task, instance seed, starting lr, observe
setting and budget) is trained again through :func:`chuck.evaluation.runs.run_one`, the function
``chuck evaluate`` executes for one run of an arm on an instance, and its final validation loss is
divided by the recorded one. Made for the recalibrated guardrails (``chuck/core/guardrails.py``):
any other behaviour change in the working tree is measured too (the JSON records the policy's
identity, the commit and which source files differ from it).

Runs that are the same run are trained once: a harm probe at one of the main starting lrs is that
main run (``kind`` says ``main+harm_probe``). Per run, how often a guardrail acted (``guardrail_events``,
by action) is read off the optimizer, so a changed loss can be told apart from a run the guardrails
never touched. One torch thread, one process; the CSV gets one flushed line per run and a rerun skips
the runs already there (interrupt and resume at will); the JSON is rewritten from the whole CSV at the end.

    OMP_NUM_THREADS=1 python experiments/guardrails_paired.py docs/results/test_v10/rows.csv --observe on \\
        --out docs/results/guardrails_paired/test_observe
    python experiments/guardrails_paired.py docs/results/test_v10/rows.csv --observe on --check 2   # determinism

Summary (over the runs, and over the 4 main starting lrs alone): the geometric mean of new/old with a
95% bootstrap interval that resamples *instances* (task, seed) with all their runs (the runs of one
instance share data and initialization; ``chuck.evaluation.stats.bootstrap_ci``), the shares more than
5% better (< 0.95) and worse (> 1.05), the worst ratio; per family and per starting lr. Once every run is
done, also the arm's regret and harm summary with the new losses (``regret.now``) beside the recorded one
(``regret.recorded``): the oracle and the harm reference involve no chuck run, so the rows' own
``oracle_loss`` and harm reference still hold.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
#: Source trees whose content decides what a run does (hashed into ``code_hash``).
CODE_DIRS = ("chuck", "policies", "envs", "training_zoo")
BETTER, WORSE = 0.95, 1.05
FIELDS = (
    "key",
    "task",
    "family",
    "seed",
    "lr",
    "steps",
    "observe",
    "kinds",
    "old_final",
    "new_final",
    "ratio",
    "new_diverged",
    "new_error",
    "guardrail_events",
    "guardrail_actions",
    "seconds",
    "code_hash",
)


def code_hash() -> str:
    """The content of every source file a run imports (Python and the shipped policy artifacts)."""
    digest = hashlib.sha256()
    for d in CODE_DIRS:
        for f in sorted((ROOT / d).rglob("*")):
            if f.is_file() and f.suffix in (".py", ".json", ".pt") and "__pycache__" not in f.parts:
                digest.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()[:12]


def git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def identity(policy: str) -> str:
    """The policy's identity as ``chuck evaluate`` records it in arms.json (the spec itself if that fails)."""
    try:
        from chuck.evaluation.identity import policy_identity

        return policy_identity(policy)
    except Exception as exc:  # noqa: BLE001 - the identity is a record, not a precondition
        return f"{policy} (identity unreadable: {type(exc).__name__}: {exc})"


def run_key(task: str, seed: int, lr: float, observe: bool, steps: int) -> str:
    return f"{task}|{seed}|{lr!r}|{'observe' if observe else 'no-observe'}|{steps}"


def select(rows_csv: Path, policy: str, observe: bool, seeds: set[int] | None) -> list[dict[str, Any]]:
    """The distinct runs of arm ``chuck:POLICY`` (or its ``/no-observe``) in ``rows_csv``, in file order."""
    from chuck.evaluation.runs import chuck_arm

    arm = chuck_arm(policy, observe)
    runs: dict[str, dict[str, Any]] = {}
    with open(rows_csv, newline="") as f:
        for r in csv.DictReader(f):
            if r.get("arm") != arm:
                continue
            seed, lr, steps = int(r["seed"]), float(r["lr"]), int(r["steps"])
            if seeds is not None and seed not in seeds:
                continue
            key = run_key(r["task_id"], seed, lr, observe, steps)
            old = float(r["final_loss"])
            if key in runs:
                if runs[key]["old_final"] != old:
                    raise SystemExit(f"{rows_csv}: two final losses for the same run {key}: {runs[key]['old_final']} and {old}")
                runs[key]["kinds"].add(r["kind"])
                continue
            runs[key] = {
                "key": key,
                "task": r["task_id"],
                "family": r["family"],
                "seed": seed,
                "lr": lr,
                "steps": steps,
                "observe": observe,
                "kinds": {r["kind"]},
                "old_final": old,
                "old_error": r.get("error", ""),
                "old_diverged": r.get("diverged") == "True",
            }
    for run in runs.values():
        run["kinds"] = "+".join(sorted(run["kinds"]))
    return list(runs.values())


class GuardrailTap:
    """Counts the guardrail actions of the run in progress. It wraps ``chuck.zoo.loop.train`` (which
    ``run_one`` calls by attribute) with a pass-through that, on a ChuckOptimizer, wraps that
    instance's ``monitors.on_guardrail`` (every guardrail action goes through it) with a counter."""

    def __init__(self) -> None:
        from chuck.zoo import loop

        self.actions: Counter[str] = Counter()
        self.tapped = False
        original = loop.train
        tap = self

        def train(instance: Any, opt: Any, *args: Any, **kwargs: Any) -> Any:
            monitors = getattr(opt, "monitors", None)
            hook = getattr(monitors, "on_guardrail", None)
            if hook is not None:

                def counting(verdict: str, _hook: Any = hook) -> None:
                    tap.actions[str(verdict)] += 1
                    _hook(verdict)

                monitors.on_guardrail = counting
                tap.tapped = True
            return original(instance, opt, *args, **kwargs)

        loop.train = train

    def reset(self) -> None:
        self.actions.clear()
        self.tapped = False


def rerun(run: dict[str, Any], policy: str, tap: GuardrailTap) -> dict[str, Any]:
    """Train ``run`` again exactly as ``chuck evaluate`` does (``run_one``); the new result and guardrail actions."""
    from chuck.evaluation.runs import RunSpec, chuck_arm, run_one

    spec = RunSpec(
        task_id=run["task"],
        seed=run["seed"],
        arm=chuck_arm(policy, run["observe"]),
        lr=run["lr"],
        steps=run["steps"],
        policy=policy,
    )
    tap.reset()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as chuck evaluate's workers (and its InlineExecutor) run
    try:
        result = run_one(spec)
    finally:
        torch.set_num_threads(threads)
    result["guardrail_events"] = sum(tap.actions.values()) if tap.tapped else -1
    result["guardrail_actions"] = ";".join(f"{a}:{n}" for a, n in sorted(tap.actions.items())) if tap.tapped else "untapped"
    return result


def check_instances(runs: list[dict[str, Any]], budget_scale: float) -> list[str]:
    """Runs whose recorded budget is not the task's budget now (the instance definition moved)."""
    from chuck.evaluation.runs import steps_for
    from chuck.zoo import get_task

    problems = []
    for task_id in sorted({r["task"] for r in runs}):
        task = get_task(task_id)
        now = steps_for(task, budget_scale)
        recorded = sorted({r["steps"] for r in runs if r["task"] == task_id})
        if recorded != [now]:
            problems.append(f"{task_id}: recorded steps {recorded}, the task's budget x {budget_scale} is now {now}")
    return problems


def read_done(path: Path) -> dict[str, dict[str, Any]]:
    done: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return done
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is not None and tuple(reader.fieldnames) != FIELDS:
            raise SystemExit(f"{path} has other columns ({reader.fieldnames}): choose another --out")
        for raw in reader:
            try:
                row: dict[str, Any] = dict(raw)
                row["seed"], row["steps"] = int(raw["seed"]), int(raw["steps"])
                for k in ("lr", "old_final", "new_final", "ratio", "seconds"):
                    row[k] = float(raw[k])
                row["guardrail_events"] = int(raw["guardrail_events"])
                row["observe"] = raw["observe"] == "True"
                row["new_diverged"] = raw["new_diverged"] == "True"
            except (TypeError, ValueError):
                continue  # a line torn by an interruption: that run is done again
            done[row["key"]] = row
    return done


def figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Geo-mean ratio with a bootstrap interval over instances, shares better/worse, the extremes."""
    from chuck.evaluation.stats import bootstrap_ci

    if not rows:
        return {"runs": 0}
    logs: dict[tuple[str, int], list[float]] = defaultdict(list)
    for r in rows:
        logs[(r["task"], r["seed"])].append(math.log(max(r["ratio"], 1e-12)))
    s = np.array([sum(v) for v in logs.values()])
    n = np.array([len(v) for v in logs.values()], dtype=np.float64)
    point = float(np.exp(s.sum() / n.sum()))

    def stat(ids: np.ndarray, axis: int) -> np.ndarray:
        i = ids.astype(int)
        return np.exp(s[i].sum(axis=axis) / n[i].sum(axis=axis))

    lo, hi = bootstrap_ci(np.arange(len(s), dtype=np.float64), stat, point)
    ratios = np.array([r["ratio"] for r in rows])
    worst = max(rows, key=lambda r: r["ratio"])
    best = min(rows, key=lambda r: r["ratio"])
    where = "{task} seed {seed} lr {lr:g}"
    return {
        "runs": len(rows),
        "instances": len(s),
        "geo_ratio": point,
        "geo_ratio_ci": [lo, hi],
        "better_5pct": float(np.mean(ratios < BETTER)),
        "worse_5pct": float(np.mean(ratios > WORSE)),
        "identical": float(np.mean(ratios == 1.0)),
        "worst_ratio": float(worst["ratio"]),
        "worst_run": where.format(**worst),
        "best_ratio": float(best["ratio"]),
        "best_run": where.format(**best),
        "guardrail_acted": float(np.mean([r["guardrail_events"] > 0 for r in rows])),
        "new_failed": sum(bool(r["new_diverged"]) or bool(r["new_error"]) for r in rows),
    }


def regret_now(rows_csv: Path, arm: str, done: dict[str, dict[str, Any]], observe: bool) -> dict[str, Any] | None:
    """The arm's regret and harm summary as recorded and with the rerun losses in place of the recorded ones.

    The oracle (best of the AdamW / cosine / Prodigy sweep) and constant AdamW's loss at the tuned lr do not
    involve chuck, so each run's recorded ``oracle_loss`` and harm reference still hold: regret and harm
    scale by the run's ratio. ``None`` unless every run of the arm has been rerun.
    """
    from dataclasses import asdict

    from chuck.evaluation.runs import FAILED_REGRET
    from chuck.evaluation.schedule import parse_row
    from chuck.evaluation.stats import summarize_arms

    old_rows, new_rows = [], []
    with open(rows_csv, newline="") as f:
        for raw in csv.DictReader(f):
            if raw.get("arm") != arm:
                continue
            row = parse_row(raw)
            if row is None:
                continue
            new = done.get(run_key(row["task_id"], row["seed"], row["lr"], observe, row["steps"]))
            if new is None:
                return None
            failed = bool(new["new_diverged"]) or bool(new["new_error"])
            reference = row["final_loss"] / row["harm"] if row["harm"] else None
            old_rows.append(row)
            new_rows.append(
                {
                    **row,
                    "final_loss": new["new_final"],
                    "regret": FAILED_REGRET if failed else new["new_final"] / max(row["oracle_loss"], 1e-12),
                    "harm": None if reference is None else (FAILED_REGRET if failed else new["new_final"] / reference),
                    "diverged": bool(new["new_diverged"]),
                    "error": new["new_error"],
                }
            )
    out = {}
    for name, rows in (("recorded", old_rows), ("now", new_rows)):
        summary = summarize_arms(rows, [arm]).get(arm)
        out[name] = asdict(summary) if summary is not None else None
    return out


def summarize(rows: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    main = [r for r in rows if "main" in r["kinds"].split("+")]
    out: dict[str, Any] = {**meta, "all": figures(rows), "main": figures(main), "per_family": {}, "per_lr": {}}
    for fam in sorted({r["family"] for r in rows}):
        out["per_family"][fam] = figures([r for r in rows if r["family"] == fam])
    for lr in sorted({r["lr"] for r in main}):
        out["per_lr"][repr(lr)] = figures([r for r in main if r["lr"] == lr])
    hashes = Counter(r["code_hash"] for r in rows)
    out["code_hashes"] = dict(hashes)
    if len(hashes) > 1:
        out.setdefault("warnings", []).append(f"runs made with {len(hashes)} different source trees: {dict(hashes)}")
    return out


def line(name: str, f: dict[str, Any]) -> str:
    if not f.get("runs"):
        return f"{name}: no runs"
    lo, hi = f["geo_ratio_ci"]
    return (
        f"{name:32s} {f['runs']:3d} runs / {f['instances']:2d} inst  geo new/old {f['geo_ratio']:.3f} [{lo:.3f}, {hi:.3f}]  "
        f"better>5% {f['better_5pct']:4.0%}  worse>5% {f['worse_5pct']:4.0%}  identical {f['identical']:4.0%}  "
        f"worst {f['worst_ratio']:.3f} ({f['worst_run']})  guardrail acted {f['guardrail_acted']:4.0%}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rows", type=Path, help="a chuck evaluate rows.csv")
    ap.add_argument("--policy", default="default", help="the chuck arm's policy spec (default: default)")
    ap.add_argument(
        "--observe",
        choices=("on", "off"),
        required=True,
        help="the runs with observe (arm chuck:P) or without (chuck:P/no-observe)",
    )
    ap.add_argument("--seeds", default=None, help="only these instance seeds, e.g. 0 (default: every seed)")
    ap.add_argument("--budget-scale", type=float, default=1.0, help="the evaluation's budget_scale (to check the recorded steps)")
    ap.add_argument("--out", type=Path, help="output prefix: OUT.csv (one line per run, resumed) and OUT.json")
    ap.add_argument(
        "--check", type=int, default=0, help="determinism check: run the first N runs twice each, print, write nothing"
    )
    ap.add_argument(
        "--guardrails",
        default=None,
        help="a variant of the guardrails to measure: GuardrailConfig fields as JSON, e.g. '{\"spike_patience\": 0}' "
        "(every run's default config gets them; name --out after the variant)",
    )
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.guardrails:
        variant = json.loads(args.guardrails)
        from chuck.core import guardrails as g

        base_init = g.GuardrailConfig.__init__

        def init(self: object, *a: object, **k: object) -> None:
            base_init(self, *a, **k)  # type: ignore[arg-type]
            for name, value in variant.items():
                setattr(self, name, value)
            self.__post_init__()  # type: ignore[attr-defined]

        g.GuardrailConfig.__init__ = init  # type: ignore[method-assign]
    torch.set_num_threads(1)

    import chuck  # noqa: F401 - chuck first: its import order is the one chuck evaluate has
    from chuck.evaluation.runs import chuck_arm, loss_ratio

    observe = args.observe == "on"
    seeds = {int(s) for s in args.seeds.split(",")} if args.seeds else None
    runs = select(args.rows, args.policy, observe, seeds)
    if not runs:
        raise SystemExit(f"{args.rows}: no runs of chuck:{args.policy} {'with' if observe else 'without'} observe")
    for p in check_instances(runs, args.budget_scale):
        print(f"WARNING instance definition: {p}", flush=True)
    tap = GuardrailTap()
    code = code_hash()

    if args.check:
        for run in runs[: args.check]:
            a, b = rerun(run, args.policy, tap), rerun(run, args.policy, tap)
            same = a["final_loss"] == b["final_loss"] or (math.isnan(a["final_loss"]) and math.isnan(b["final_loss"]))
            print(
                f"{run['key']}: old {run['old_final']!r}  new {a['final_loss']!r}  again {b['final_loss']!r}  "
                f"{'identical' if same else 'DIFFERENT'}  ratio {a['final_loss'] / run['old_final']:.4f}  "
                f"guardrails {a['guardrail_actions'] or 'none'}  {a['seconds']:.1f}s {a['error']}",
                flush=True,
            )
        return
    if args.out is None:
        ap.error("--out is required (unless --check)")

    csv_path, json_path = args.out.with_suffix(".csv"), args.out.with_suffix(".json")
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    done = read_done(csv_path)
    todo = [r for r in runs if r["key"] not in done]
    print(
        f"{len(runs)} runs of chuck:{args.policy}{'' if observe else '/no-observe'} in {args.rows}; {len(runs) - len(todo)} already in "
        f"{csv_path}, {len(todo)} to run; policy {identity(args.policy)}; code {code}",
        flush=True,
    )
    new_file = not csv_path.exists() or csv_path.stat().st_size == 0
    torn = not new_file and not csv_path.read_bytes().endswith(b"\n")
    t0 = time.perf_counter()
    with open(csv_path, "a", newline="") as f:
        if torn:
            f.write("\n")
        writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        if new_file:
            writer.writeheader()
            f.flush()
        for i, run in enumerate(todo, 1):
            res = rerun(run, args.policy, tap)
            row = {
                **run,
                "new_final": res["final_loss"],
                "ratio": loss_ratio(res, run["old_final"]),  # a failed new run counts 100, as in chuck evaluate
                "new_diverged": bool(res["diverged"]),
                "new_error": res["error"],
                "guardrail_events": res["guardrail_events"],
                "guardrail_actions": res["guardrail_actions"],
                "seconds": res["seconds"],
                "code_hash": code,
            }
            writer.writerow(row)
            f.flush()
            done[run["key"]] = row
            elapsed = time.perf_counter() - t0
            eta = elapsed / i * (len(todo) - i)
            print(
                f"[{i}/{len(todo)}] {run['task']} seed {run['seed']} lr {run['lr']:g} {'observe' if observe else 'no-observe'}: "
                f"old {run['old_final']:.4f} new {res['final_loss']:.4f} ratio {row['ratio']:.3f}  "
                f"guardrails {res['guardrail_actions'] or 'none'}  {res['seconds']:.1f}s  (elapsed {elapsed / 60:.1f} min, eta {eta / 60:.1f} min)"
                + (f"  ERROR {res['error']}" if res["error"] else ""),
                flush=True,
            )

    rows = [done[r["key"]] for r in runs if r["key"] in done]
    changed = [p for p in git("status", "--porcelain", "--", *CODE_DIRS).splitlines() if p.strip()]
    meta = {
        "what": f"final validation loss of chuck:{args.policy} rerun now / as recorded in {args.rows}, same instance, lr, budget",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "rows": str(args.rows),
        "observe": observe,
        "seeds": sorted(seeds) if seeds else "all",
        "planned_runs": len(runs),
        "done_runs": len(rows),
        "policy": identity(args.policy),
        "commit": git("rev-parse", "HEAD"),
        "source_changes_vs_commit": changed,
        "thresholds": {"better": BETTER, "worse": WORSE},
        "bootstrap": "95% percentile bootstrap over instances (task, seed) with all their runs, chuck.evaluation.stats.bootstrap_ci",
    }
    summary = summarize(rows, meta)
    regret = regret_now(args.rows, chuck_arm(args.policy, observe), done, observe)
    if regret is not None:
        summary["regret"] = regret
    json_path.write_text(json.dumps(summary, indent=1) + "\n")
    print(line("all runs", summary["all"]))
    print(line("main (4 starting lrs)", summary["main"]))
    for lr, fig in summary["per_lr"].items():
        print(line(f"  from lr {float(lr):g}", fig))
    for fam, fig in summary["per_family"].items():
        print(line(f"  {fam}", fig))
    if regret is not None:
        for name, r in regret.items():
            if r is not None:
                print(
                    f"regret {name:8s} median {r['median_regret']:.3f} [{r['median_regret_ci'][0]:.3f}, {r['median_regret_ci'][1]:.3f}]  "
                    f"geo {r['geo_regret']:.3f} [{r['geo_regret_ci'][0]:.3f}, {r['geo_regret_ci'][1]:.3f}]  within 10% {r['within_10pct']:.0%}  "
                    f"harm > 1.05 {r['harm_rate']:.0%}  worst harm {r['worst_harm']:.3f}"
                )
    for w in summary.get("warnings", []):
        print(f"WARNING {w}")
    print(f"wrote {csv_path} and {json_path}")


if __name__ == "__main__":
    main()
