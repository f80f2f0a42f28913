"""``evaluate``: check every input, run the evaluation, summarize, write the outputs, log to MLflow.

Every input is checked first (policies load, tasks resolve, baselines are known and
installed, ``rows.csv`` in ``out`` is readable); nothing runs and nothing is written before
that passes. The runs themselves are planned and executed by
:class:`chuck.evaluation.schedule.Scheduler`.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import math
import os
import pickle
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import chuck.zoo as zoo
from chuck.core.loading import PolicyLoadError, is_builtin
from chuck.evaluation.bases import DEFAULT_BASE, default_grids, parse_bases
from chuck.evaluation.hindsight import hindsight_stats, instance_rows
from chuck.evaluation.identity import policy_identity, record, recorded_policies, stale_arms
from chuck.evaluation.oracle import OracleCache, instance_key
from chuck.evaluation.resolution import DEFAULT_EPS, combine_resolutions, harm_against_aa, plot_replays, replay_references
from chuck.evaluation.runs import BASELINE_PACKAGES, BASELINES, EVAL_EVERY, chuck_arm, instance_config, steps_for
from chuck.evaluation.schedule import LEGACY_ROW_FIELDS, ROW_FIELDS, Instance, Scheduler
from chuck.evaluation.stats import Summary, mode_suffix, plot_regret_by_lr, summarize_arms, write_summary
from chuck.evaluation.tracking import log_summary
from chuck.policies.registry import download_registered_policy
from chuck.tracking.store import default_tracking_uri

DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_POLICIES = ("default", "heuristic")
EXPERIMENT = "chuck-evaluate"


class EvaluationInputError(ValueError):
    """An unknown policy, task or baseline, or an unusable setting: raised before any run."""


def _split_list(value: str | Sequence[Any]) -> list[str]:
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    return [i.strip() for i in items if i.strip()]


def _unique(xs: Sequence[Any]) -> list[Any]:
    return list(dict.fromkeys(xs))


def resolve_task_spec(spec: str | Sequence[str]) -> list[Any]:
    """``chuck.zoo.resolve_tasks``, accepting ``test``/``validation`` while the registry still calls them ``heldout``."""

    items = []
    for item in _split_list(spec):
        if item in ("test", "validation", "heldout"):
            try:
                zoo.list_tasks(item)
            except ValueError:
                item = "heldout" if item != "heldout" else "test"
        items.append(item)
    try:
        return zoo.resolve_tasks(items)
    except (KeyError, ValueError) as exc:
        raise EvaluationInputError(f"tasks {spec!r}: {exc.args[0] if exc.args else exc}") from None


def _resolve_policy(spec: str, tracking_uri: str | None, downloads: Path) -> str:
    """Load the policy once (so a bad one fails now); return where workers load it from.

    ``models:/`` policies are downloaded once, into ``downloads`` (removed after the evaluation).
    """
    import chuck

    try:
        if spec.startswith("models:/"):
            import inspect

            uri = tracking_uri or default_tracking_uri()
            if "dst" in inspect.signature(download_registered_policy).parameters:
                dst = Path(tempfile.mkdtemp(prefix="policy-", dir=downloads))
                location = str(download_registered_policy(spec, uri, dst=dst))
            else:  # pragma: no cover - older registry module: downloads to its own temporary folder
                location = str(download_registered_policy(spec, uri))
        elif is_builtin(spec):
            location = spec
        else:
            location = str(Path(spec).expanduser().resolve())
        chuck.load_policy(location)
    except (PolicyLoadError, OSError, ValueError) as exc:
        raise EvaluationInputError(f"policy {spec!r}: {exc}") from None
    return location


def _settings_hash(budget_scale: float, oracle_lrs: Sequence[float], base: str = DEFAULT_BASE) -> str:
    settings: dict[str, Any] = {"budget_scale": budget_scale, "eval_every": EVAL_EVERY, "oracle_lrs": list(oracle_lrs)}
    if base != DEFAULT_BASE:  # AdamW's rows keep the keys they had before evaluations named a base
        settings["base"] = base
    return hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:8]


@dataclass
class _Inputs:
    """The checked inputs of one evaluation."""

    policies: list[str]
    baselines: list[str]
    task_spec: Any
    tasks: list[Any]
    lrs: list[float]
    seeds: list[int]
    oracle_lrs: tuple[float, ...]
    workers: int | None
    out: Path
    budget_scale: float
    observe: bool
    backend: str = "process"
    #: The base optimizers, each with its grids: ``base -> (starting lrs, oracle lrs)``; ``lrs`` and
    #: ``oracle_lrs`` above are the first base's.
    grids: dict[str, tuple[list[float], tuple[float, ...]]] = field(default_factory=dict)

    @property
    def bases(self) -> list[str]:
        return list(self.grids)


BACKENDS = ("process", "ray")


def _numbers(value: Any, kind: type, what: str) -> list[Any]:
    try:
        xs = _unique([kind(float(x)) if kind is float else kind(x) for x in _split_list(value)])
    except ValueError:
        raise EvaluationInputError(f"{what} must be numbers, got {value!r}") from None
    if not xs or not all(math.isfinite(x) and x >= 0 for x in xs) or (kind is float and min(xs) <= 0):
        raise EvaluationInputError(f"{what} must be {'positive' if kind is float else 'non-negative'} numbers, got {value!r}")
    return xs


#: The ``policies`` entry that stands for every chuck arm already recorded in the output directory.
RECORDED = "recorded"


def _check(
    policies: Any,
    baselines: Any,
    tasks: Any,
    lrs: Any,
    seeds: Any,
    workers: int | None,
    out: Any,
    budget_scale: float,
    observe: bool,
    oracle_lrs: Any,
    backend: str = "process",
    base_optimizers: Any = DEFAULT_BASE,
) -> _Inputs:
    """Everything that can be wrong with the inputs, before anything runs (policies are checked by the caller).

    ``lrs`` or ``oracle_lrs`` ``None``: each base optimizer's default grid (:mod:`chuck.evaluation.bases`).
    """
    try:
        bases = parse_bases(_split_list(base_optimizers))
    except ValueError as exc:
        raise EvaluationInputError(f"base_optimizers {base_optimizers!r}: {exc}") from None
    baseline_names = _unique(_split_list(baselines))
    unknown = [b for b in baseline_names if b not in BASELINES]
    if unknown:
        raise EvaluationInputError(f"unknown baseline(s) {unknown}; choose from {list(BASELINES)}")
    for b in [*baseline_names, "prodigy"]:  # the oracle sweep runs Prodigy whatever the baselines
        module = BASELINE_PACKAGES.get(b)
        if module and importlib.util.find_spec(module) is None:
            why = f"baseline {b!r}" if b in baseline_names else "the oracle sweep (Prodigy)"
            raise EvaluationInputError(f"{why} needs the {module} package: pip install 'chuck[experiments]'")
    policy_specs = _unique(_split_list(policies))
    if RECORDED in policy_specs:
        found = recorded_policies(Path(out), observe)
        if not found:
            setting = "with" if observe else "without"
            raise EvaluationInputError(
                f"--policies {RECORDED}: {Path(out) / 'arms.json'} records no chuck arm measured {setting} observe"
            )
        at = policy_specs.index(RECORDED)
        policy_specs = _unique([*policy_specs[:at], *found, *policy_specs[at + 1 :]])
    if not policy_specs and not baseline_names:
        raise EvaluationInputError("nothing to evaluate: give at least one policy or baseline")
    if not (budget_scale > 0 and math.isfinite(budget_scale)):
        raise EvaluationInputError(f"budget_scale must be positive, got {budget_scale}")
    if workers is not None and workers < 1:
        raise EvaluationInputError(f"workers must be at least 1, got {workers}")
    if backend not in BACKENDS:
        raise EvaluationInputError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "ray" and importlib.util.find_spec("ray") is None:
        raise EvaluationInputError("the Ray backend needs Ray, which is not installed: pip install 'chuck[ray]'")
    task_list = resolve_task_spec(tasks)
    if (workers or 1) > 1 or backend == "ray":
        for task in task_list:
            if zoo.split_of(task.id) == "custom":
                try:
                    pickle.dumps(task)
                except Exception as exc:  # noqa: BLE001 - any pickling failure
                    raise EvaluationInputError(
                        f"task {task.id!r} cannot be sent to worker processes ({exc}); "
                        "define it in an importable module or use workers=1 (backend process)"
                    ) from None
    out = Path(out)
    rows = out / "rows.csv"
    if rows.exists() and rows.stat().st_size:
        with open(rows, newline="") as f:
            header = next(csv.reader(f), None)
        if header is not None and tuple(header) not in (ROW_FIELDS, LEGACY_ROW_FIELDS):
            raise EvaluationInputError(
                f"{rows} has other columns ({header}); it was written by another version of "
                "chuck evaluate: choose a new output directory"
            )
    given_lrs = None if lrs is None else _numbers(lrs, float, "lrs")
    given_oracle = None if oracle_lrs is None else tuple(sorted(_numbers(oracle_lrs, float, "oracle lrs")))
    grids = {}
    for base in bases:
        default_lrs, default_oracle = default_grids(base)
        grids[base] = (list(default_lrs) if given_lrs is None else given_lrs, given_oracle or default_oracle)
    first_lrs, first_oracle = grids[bases[0]]
    return _Inputs(
        policies=policy_specs,
        baselines=baseline_names,
        task_spec=tasks,
        tasks=task_list,
        lrs=first_lrs,
        seeds=_numbers(seeds, int, "seeds"),
        oracle_lrs=first_oracle,
        grids=grids,
        workers=workers,
        out=out,
        budget_scale=float(budget_scale),
        observe=observe,
        backend=backend,
    )


def evaluate(
    policies: Sequence[str] | str = DEFAULT_POLICIES,
    baselines: Sequence[str] | str = BASELINES,
    tasks: Sequence[str] | str = "test",
    lrs: Sequence[float] | str | None = None,
    seeds: Sequence[int] | str = DEFAULT_SEEDS,
    workers: int | None = None,
    out: str | Path = "chuck-evaluate",
    budget_scale: float = 1.0,
    observe: bool = True,
    oracle_lrs: Sequence[float] | str | None = None,
    mlflow: bool = True,
    tracking_uri: str | None = None,
    progress: bool = True,
    backend: str = "process",
    ray_address: str | None = None,
    aa_control: bool = False,
    base_optimizers: Sequence[str] | str = DEFAULT_BASE,
) -> Summary:
    """Evaluate chuck policies against baseline optimizers on zoo (or your) tasks.

    Every arm trains the same instances (task, seed, base optimizer) from every starting lr
    through the deployment path (``ChuckOptimizer`` with its fallback; validation every 20 steps
    through ``observe`` unless ``observe=False``) for the task's budget times ``budget_scale``.
    Regret is the final validation loss over the instance's oracle (best over a sweep of the base
    at a constant lr and with cosine over ``oracle_lrs``, and Prodigy once); a diverged or crashed
    run counts as regret 100. See ``chuck.evaluation`` for every definition, and
    :mod:`chuck.evaluation.bases` for the base optimizers.

    Args:
        policies: policy specs for ``chuck.load_policy`` (``default``, ``heuristic``,
            ``constant``, a path, ``models:/NAME@ALIAS``); arm ``chuck:SPEC``. ``recorded`` stands
            for every chuck arm ``out`` already holds in this setting (a summary of all of them,
            resumed: nothing runs again).
        baselines: any of ``adamw``, ``cosine``, ``plateau``, ``schedulefree``, ``prodigy``.
        tasks: a split (``test``, ``validation``, ``train``, ``custom``, ``all``), ``domain:X``,
            task ids, or a comma-separated mix.
        lrs: starting learning rates, used as given for every base optimizer (default: 1e-4, 1e-3,
            1e-2, 1e-1, times the base's ``chuck.evaluation.bases.LR_SHIFT``: x10 for SGD,
            NesterovSGD and Adafactor).
        seeds: instance seeds; each (task, seed, base) is one instance.
        workers: worker processes (one torch thread each); 1 (the default) runs in this process.
            With ``backend="ray"``: the runs in flight at once (default: the cluster's CPUs).
        out: output directory (``rows.csv``, ``summary.json``, ``summary.md``, ``regret_by_lr.png``;
            with ``observe=False`` ``summary_no_observe.*`` and ``regret_by_lr_no_observe.png``, so
            that both settings share one directory and its oracle sweeps); rerunning with the same
            directory resumes (``arms.json`` records which policy each chuck arm was measured with:
            resuming an arm under a name that now means another policy is refused). A summary
            covers the arms of the call that wrote it.
        budget_scale: multiplies every task's step budget (small values for smoke tests).
        observe: report validation losses to chuck's ``observe``; ``False`` gives the arms
            ``chuck:SPEC/no-observe``.
        oracle_lrs: the oracle sweep's lrs, used as given for every base optimizer (default: nine
            half-decades 1e-5..1e-1, shifted per base as ``lrs`` is).
        mlflow: log a parent run (experiment ``chuck-evaluate``) with the summary and plot.
        tracking_uri: MLflow store (default: chuck's local SQLite store).
        progress: show a progress bar.
        backend: ``"process"`` (this machine) or ``"ray"``: every run a Ray task on the cluster
            at ``ray_address`` (default ``$RAY_ADDRESS``, else a local Ray runtime), one CPU each.
        ray_address: see ``backend``.
        aa_control: also replay each instance's references (the oracle's winning run and constant
            AdamW at the best lr) with the lr x (1 +- 1e-3): the A/A control, which says how much
            of a regret or harm figure the runs' own chaos and the choice of the best run as
            reference explain (``Summary.aa_control``, each arm's ``harm_beyond_aa``; every replay
            in ``out/aa_replays.json``, a plot per family in ``out/aa_control.png``; see
            :mod:`chuck.evaluation.resolution`). Six runs per
            instance, run again on every call, on this machine's processes with ``backend="ray"``.
        base_optimizers: a name, comma-separated names or a sequence, of
            ``chuck.zoo.task.BASE_OPTIMIZERS`` (AdamW, Adam, SGD, RMSprop, NesterovSGD, and Adafactor,
            which no meta-training episode draws); each is its own set of instances. The arms ``adamw`` (the base at a constant lr), ``cosine``,
            ``plateau`` and the chuck arms train it, and so do the oracle sweep's runs;
            ``schedulefree``, ``prodigy``, ``prodigy-sf`` and ``ldog`` bring their own optimizer
            (and run on every base's instances all the same). The summary pools every base
            (``Summary.arms``) and gives each its own figures (``Summary.by_base``).

    Raises:
        EvaluationInputError: an unknown policy, task, baseline or base optimizer, or a bad setting; raised
            before any run starts or any file is written.
    """
    inputs = _check(
        policies, baselines, tasks, lrs, seeds, workers, out, budget_scale, observe, oracle_lrs, backend, base_optimizers
    )
    downloads = Path(tempfile.mkdtemp(prefix="chuck-evaluate-policies-"))
    try:
        locations = {chuck_arm(p, observe): _resolve_policy(p, tracking_uri, downloads) for p in inputs.policies}
        executor = None
        if inputs.backend == "ray":
            from chuck.metatrain.ray_backend import RayExecutor

            executor = RayExecutor(ray_address)
            inputs.workers = inputs.workers or executor.capacity
        summary = _run(inputs, locations, progress, executor, aa_control)
    finally:
        shutil.rmtree(downloads, ignore_errors=True)
    write_summary(summary, inputs.out)  # first: an MLflow failure must not cost the results
    if mlflow:
        try:
            log_summary(summary, inputs.out, tracking_uri, EXPERIMENT)
        except Exception as exc:  # noqa: BLE001 - store down, bad URI...: the evaluation itself succeeded
            summary.mlflow_run_id = None
            summary.warnings.append(
                f"MLflow logging failed ({type(exc).__name__}: {exc}); outputs are in the output directory only"
            )
            write_summary(summary, inputs.out)
    return summary


def _run(inputs: _Inputs, locations: dict[str, str], progress: bool, executor: Any = None, aa_control: bool = False) -> Summary:

    arms = list(locations) + inputs.baselines
    instances = []
    for base, (lrs, oracle_lrs) in inputs.grids.items():
        settings_hash = _settings_hash(inputs.budget_scale, oracle_lrs, base)
        for task in inputs.tasks:
            ship = zoo.split_of(task.id) == "custom"  # registered at runtime: a fresh worker cannot look it up
            for seed in inputs.seeds:
                steps = steps_for(task, inputs.budget_scale)
                config = instance_config(task, seed, base)
                cache = OracleCache(instance_key(task, seed, inputs.budget_scale, steps, config))
                instances.append(
                    Instance(
                        task=task,
                        seed=seed,
                        steps=steps,
                        cache=cache,
                        ship_task=ship,
                        base=base,
                        lrs=tuple(lrs),
                        oracle_lrs=oracle_lrs,
                        settings_hash=settings_hash,
                    )
                )
    inputs.out.mkdir(parents=True, exist_ok=True)
    sched = Scheduler(
        arms,
        locations,
        instances,
        inputs.lrs,
        inputs.oracle_lrs,
        _settings_hash(inputs.budget_scale, inputs.oracle_lrs, inputs.bases[0]),
        inputs.out / "rows.csv",
        inputs.workers or 1,
        progress,
        executor,
    )
    sched.load_rows()
    identities = {arm: policy_identity(location) for arm, location in locations.items()}
    try:
        stale = stale_arms(inputs.out, identities, {r["arm"] for r in sched.rows})
    except ValueError as exc:  # an unreadable manifest
        raise EvaluationInputError(str(exc)) from None
    if stale:
        raise EvaluationInputError(
            f"{inputs.out / 'rows.csv'} holds rows of another policy under the same arm name: "
            + "; ".join(stale)
            + ". Choose a new --out directory (copying rows.csv without those arms' rows keeps the rest and the "
            "oracle), or remove those rows to measure the arm again."
        )
    record(inputs.out, identities)
    sched.run()

    rows = [r for r in sched.rows if r["key"] in sched.planned]
    settings = {
        "policies": inputs.policies,
        "baselines": inputs.baselines,
        "tasks": [t.id for t in inputs.tasks],
        "task_spec": inputs.task_spec if isinstance(inputs.task_spec, str) else list(inputs.task_spec),
        "lrs": inputs.lrs,
        "seeds": inputs.seeds,
        "budget_scale": inputs.budget_scale,
        "observe": inputs.observe,
        "oracle_lrs": list(inputs.oracle_lrs),
        "oracle_arms": "constant and cosine runs of the instance's base optimizer at every oracle lr; Prodigy once at lr=1.0 (+ cosine)",
        "eval_every": EVAL_EVERY,
        "workers": inputs.workers or 1,
        "backend": inputs.backend,
        "base_optimizers": inputs.bases,
        "grids": {base: {"lrs": list(lrs), "oracle_lrs": list(olrs)} for base, (lrs, olrs) in inputs.grids.items()},
    }
    summary = Summary(
        arms=summarize_arms(rows, arms),
        settings=settings,
        out=str(inputs.out),
        rows=len(rows),
        executed=sched.executed,
        oracle_executed=sched.oracle_executed,
        warnings=sched.warnings,
        hindsight=_hindsight(sched.instances),
        by_base={base: summarize_arms([r for r in rows if r["base"] == base], arms) for base in inputs.bases},
    )
    spec = inputs.task_spec if isinstance(inputs.task_spec, str) else ",".join(map(str, inputs.task_spec))
    bases = "" if inputs.bases == [DEFAULT_BASE] else f", bases {','.join(inputs.bases)}"
    title = (
        f"tasks {spec[:40]} ({len(inputs.tasks)} families x {len(inputs.seeds)} seeds, budget x{inputs.budget_scale:g}"
        f"{bases}{'' if inputs.observe else ', no observe'}): lower is better, 1 = best of a {len(inputs.oracle_lrs)}-lr sweep"
    )
    if aa_control:
        _add_aa_control(summary, inputs, rows)
    plot = plot_regret_by_lr(
        summary.arms, inputs.out / f"regret_by_lr{mode_suffix(inputs.observe)}.png", title, summary.hindsight
    )
    summary.plot = str(plot) if plot else None
    return summary


def _hindsight(instances: list[Instance]) -> dict[str, dict[str, Any]]:
    """The hindsight rows' statistics (chuck.evaluation.hindsight), read off the finished sweeps (every base pooled)."""
    rows = [
        r
        for inst in instances
        if inst.oracle_ready
        for r in instance_rows(inst.results, inst.oracle_lrs or (), inst.task.id, inst.task.family, inst.seed)
    ]
    return {name: asdict(stats) for name, stats in hindsight_stats(rows).items()}


def _add_aa_control(summary: Summary, inputs: _Inputs, rows: list[dict[str, Any]]) -> None:
    """Replay the references (chuck.evaluation.resolution) and put the A/A next to every arm's harm."""

    workers = (inputs.workers or 1) if inputs.backend == "process" else (os.cpu_count() or 1)
    per_base = {
        base: replay_references(
            inputs.tasks,
            inputs.seeds,
            workers=workers,
            budget_scale=inputs.budget_scale,
            oracle_lrs=tuple(oracle_lrs),
            base=base,
        )
        for base, (_, oracle_lrs) in inputs.grids.items()
    }
    res = combine_resolutions(list(per_base.values()))
    probes = [r for r in rows if r["kind"] == "harm_probe"]
    table = harm_against_aa(res.rows, probes)
    for arm, stats in summary.arms.items():
        stats.harm_beyond_aa = table[arm]["beyond_aa"] if arm in table else None
    by_base: dict[str, Any] = {}
    for base, base_res in per_base.items():
        base_table = harm_against_aa(base_res.rows, [r for r in probes if r["base"] == base])
        for arm, stats in summary.by_base.get(base, {}).items():
            stats.harm_beyond_aa = base_table[arm]["beyond_aa"] if arm in base_table else None
        by_base[base] = {
            "oracle": asdict(base_res.oracle),
            "harm": base_table.get("A/A", {}),
            "instances": base_res.instances,
            "reproduced": base_res.reproduced,
        }
    summary.aa_control = {
        "eps": list(DEFAULT_EPS),
        "oracle": asdict(res.oracle),
        "tuned": asdict(res.tuned) if res.tuned is not None else None,
        "harm": table.get("A/A", {}),
        "instances": res.instances,
        "reproduced": res.reproduced,
        "by_base": by_base,
    }
    summary.warnings += [f"A/A control: an exact replay did not reproduce its reference: {m}" for m in res.mismatches]
    (inputs.out / "aa_replays.json").write_text(json.dumps(res.rows, indent=1, allow_nan=True) + "\n")
    plot = plot_replays(
        res.rows, inputs.out / "aa_control.png", f"A/A control: {len(res.rows)} replays, {res.instances} instances"
    )
    summary.aa_control["plot"] = str(plot) if plot else None
