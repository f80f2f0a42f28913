"""The ``chuck`` command line: demo, train-policy, evaluate, ui.

Each subcommand imports its heavy dependencies only when it runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any


def _flag_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse`` as an argparse type: its ValueError message becomes argparse's error message."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__
    return convert


def _add_dataclass_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    skip: Sequence[str] = (),
    types: dict[str, Callable[[str], Any]] | None = None,
) -> None:
    """One flag per dataclass field, help text from the attribute docstrings in the source.

    ``types`` parses the named fields' flags (a dict or list field then takes that syntax instead of
    JSON). A docstring that states its own ``(default: ...)`` keeps it: a default computed in
    ``__post_init__`` is a rule, which ``(default: None)`` would hide.
    """
    types = types or {}
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = str(nxt.value.value)  # type: ignore[union-attr]
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc,operator]
        flag = "--" + f.name.replace("_", "-")
        doc = " ".join(docs.get(f.name, "").split())
        shown = "none" if f.name in types and not default else default
        help_ = doc if "(default: " in doc else doc + f" (default: {shown})"
        if f.name in types:
            parser.add_argument(flag, default=default, type=_flag_type(types[f.name]), help=help_)
        elif isinstance(default, bool):
            parser.add_argument(flag, default=default, action=argparse.BooleanOptionalAction, help=help_)
        elif isinstance(default, (dict, list)):
            parser.add_argument(flag, default=default, type=json.loads, help=help_ + " [JSON]")
        elif default is None or "None" in str(f.type):
            none = "" if "(default: " in doc else " ('none' for none)"  # a stated default is what none gives
            parser.add_argument(flag, default=default, type=_optional(str(f.type)), help=help_ + none)
        else:
            parser.add_argument(flag, default=default, type=type(default), help=help_)


def _optional(annotation: str):
    """Parser of an ``X | None`` field's flag: ``none`` means None, otherwise X."""
    base = int if annotation.startswith("int") else float if annotation.startswith("float") else str

    def parse(text: str):
        return None if text.lower() == "none" else base(text)

    parse.__name__ = base.__name__  # argparse names the type in its error messages
    return parse


def _cmd_train_policy(args: argparse.Namespace) -> int:
    from chuck.metatrain import MetaTrainConfig, train_policy
    from chuck.zoo import TaskSpecError

    fields = {f.name for f in dataclasses.fields(MetaTrainConfig)}
    try:
        cfg = MetaTrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    except ValueError as exc:  # a bad setting (an unknown backend, ...)
        print(f"chuck train-policy: error: {exc}", file=sys.stderr)
        return 2
    try:
        result = train_policy(cfg)
    except ImportError as exc:  # a missing optional dependency (Ray for --backend ray): the message says what to install
        print(f"chuck train-policy: error: {exc}", file=sys.stderr)
        return 2
    except TaskSpecError as exc:  # raised before anything starts: no run, no file
        print(f"chuck train-policy: error: {exc}", file=sys.stderr)
        return 2
    last = result.evaluations[-1] if result.evaluations else {}
    print(f"policy exported to {result.artifact_dir}")
    print(f"registered as models:/{cfg.name}@{cfg.alias} (version {result.model_version}); MLflow run {result.run_id}")
    if last:
        print(
            f"held-out return {last['heldout_return']:+.3f} vs constant {last['constant_return']:+.3f} "
            f"(advantage {last['advantage']:+.3f})"
        )
    if result.lost_episodes:
        print(f"{result.lost_episodes} episode(s) lost to dead environment actors were retried")
    print(f"load it with chuck.load_policy({str(result.artifact_dir)!r}) or chuck.load_policy('models:/{cfg.name}@{cfg.alias}')")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from chuck.demo import DemoConfig, run_demo

    fields = {f.name for f in dataclasses.fields(DemoConfig)}
    run_demo(DemoConfig(**{k: v for k, v in vars(args).items() if k in fields}))
    return 0


def _cmd_history(args: argparse.Namespace) -> int:
    import polars as pl

    from chuck.history import filter_history, history_dir, read_history, summary_columns

    df = filter_history(
        read_history(),
        optimizer=args.optimizer,
        policy=args.policy,
        label=args.label,
        min_params=args.min_params,
        max_params=args.max_params,
        limit=args.limit,
    )
    if len(df) == 0:
        print(f"no runs recorded in {history_dir()}")
        return 0
    if args.csv:
        df.write_csv(args.csv)
        print(f"wrote {len(df)} runs to {args.csv}")
        return 0
    view = df.select(summary_columns(df)).with_columns(
        pl.from_epoch(pl.col("created").cast(pl.Int64), time_unit="s").alias("created")
    )
    with pl.Config(tbl_rows=max(len(view), 10), tbl_cols=20, tbl_width_chars=200, fmt_str_lengths=30):
        print(view)
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from chuck.tuning import tune, zoo_train_fn

    eps = tuple(float(x) for x in args.eps_range.split(",")) if args.eps_range else None
    common = {
        "n_trials": args.trials,
        "optimizer": args.optimizer,
        "study_name": args.study or f"chuck-tune-{args.task}",
        "storage": args.storage,
        "eps_range": eps,
        "tracking_uri": args.tracking_uri,
        "heartbeat_interval": args.heartbeat_interval,
    }
    if args.n_workers > 1:
        from chuck.study import tune_zoo_in_workers

        res = tune_zoo_in_workers(
            args.task, args.n_workers, seed=args.seed, steps=args.steps, warm_start=not args.cold, progress=True, **common
        )
    else:
        train_fn, model = zoo_train_fn(args.task, seed=args.seed, steps=args.steps, optimizer=args.optimizer)
        res = tune(train_fn, model=model, warm_start=not args.cold, seed=args.seed, progress=True, **common)
    assert res is not None
    print(f"best validation loss {res.best_value:.4g} after {res.trials} trials: {res.best_params}")
    if res.enqueued:
        print(f"warm-started with {len(res.enqueued)} trials from the run history")
    print(f"study {res.study_name!r} in {res.storage} (run again to resume or extend with --trials)")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from chuck.evaluate import EvaluationInputError, evaluate
    from chuck.zoo import TaskSpecError, import_task_modules

    try:
        # the evaluation's workers get these tasks by value, and $CHUCK_TASKS_MODULES names the modules to any other
        import_task_modules(args.tasks_module)
    except TaskSpecError as exc:
        print(f"chuck evaluate: error: {exc}", file=sys.stderr)
        return 2
    try:
        summary = evaluate(
            policies=args.policies,
            baselines=args.baselines,
            tasks=args.tasks,
            lrs=args.lrs,
            seeds=args.seeds,
            workers=args.workers,
            out=args.out,
            budget_scale=args.budget_scale,
            backend=args.backend,
            ray_address=args.ray_address,
            observe=args.observe,
            oracle_lrs=args.oracle_lrs,
            mlflow=args.mlflow,
            tracking_uri=args.tracking_uri,
            progress=not args.no_progress,
        )
    except EvaluationInputError as exc:
        print(f"chuck evaluate: error: {exc}", file=sys.stderr)
        return 2
    print(summary.to_markdown())
    for w in summary.warnings:
        print(f"! {w}")
    print(
        f"{summary.rows} runs summarized ({summary.executed} executed now, {summary.oracle_executed} of them for the "
        f"oracle sweep); rows, summary.json and the plot in {summary.out}"
    )
    if summary.mlflow_run_id:
        print(f"MLflow run {summary.mlflow_run_id} in experiment 'chuck-evaluate' (chuck ui to explore)")
    return 0


def _cmd_ui(args: argparse.Namespace) -> int:
    from chuck.tracking import default_tracking_uri
    from chuck.ui import run_ui

    return run_ui(args.tracking_uri or default_tracking_uri(), port=args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chuck", description="chuck: a learned meta-policy for neural-network training")
    sub = parser.add_subparsers(dest="command", required=True)

    from chuck.metatrain import MetaTrainConfig, parse_modules, parse_task_weights

    p = sub.add_parser("train-policy", help="meta-train a policy with PPO over zoo (and your) tasks")
    _add_dataclass_flags(p, MetaTrainConfig, types={"tasks_module": parse_modules, "task_weights": parse_task_weights})
    p.set_defaults(func=_cmd_train_policy)

    from chuck.demo import DemoConfig

    p = sub.add_parser("demo", help="train a zoo task twice (plain AdamW vs chuck) and compare")
    _add_dataclass_flags(p, DemoConfig)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("history", help="show the run history as a table")
    p.add_argument("--optimizer", help="only runs of this optimizer class (e.g. AdamW)")
    p.add_argument("--policy", help="only runs whose policy id contains this")
    p.add_argument("--label", help="only runs whose label contains this")
    p.add_argument("--min-params", type=int)
    p.add_argument("--max-params", type=int)
    p.add_argument("--limit", type=int, default=50, help="most recent N runs (default 50)")
    p.add_argument("--csv", help="write the filtered table to this CSV file instead")
    p.set_defaults(func=_cmd_history)

    p = sub.add_parser("tune", help="Optuna cold start on a zoo task (warm-started from the history)")
    p.add_argument("--task", required=True, help="zoo task id, e.g. cv.digits_mlp")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--steps", type=int, default=None, help="training steps per trial (default: the task budget)")
    p.add_argument("--optimizer", default="AdamW")
    p.add_argument("--eps-range", default=None, help="'lo,hi' epsilon search range (Adam family)")
    p.add_argument("--study", default=None)
    p.add_argument(
        "--storage",
        default=None,
        help="Optuna RDB URL, e.g. postgresql://USER:PASSWORD@HOST/DB to share "
        "the study across machines (default sqlite under CHUCK_HOME)",
    )
    p.add_argument(
        "--n-workers",
        type=int,
        default=1,
        help="worker processes sharing the study (default 1); the same command on other machines adds theirs",
    )
    p.add_argument(
        "--heartbeat-interval",
        type=int,
        default=10,
        help="seconds between a running trial's heartbeats; a dead worker's trial is retried after 3 of them",
    )
    p.add_argument("--cold", action="store_true", help="no warm start from the history")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tracking-uri", default=None)
    p.set_defaults(func=_cmd_tune)

    p = sub.add_parser(
        "evaluate",
        help="chuck policies vs baseline optimizers: regret against an lr-sweep oracle",
        description="Every arm trains the same task instances (task, seed) from every starting lr; "
        "regret = final validation loss / the best of an lr sweep. Resumes in --out.",
    )
    from chuck.evaluate import BASELINES, DEFAULT_LRS, DEFAULT_POLICIES, DEFAULT_SEEDS, ORACLE_LRS

    def _csv(xs: Sequence[object]) -> str:
        return ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in xs)

    p.add_argument(
        "--policies",
        default=_csv(DEFAULT_POLICIES),
        help="comma-separated policies: default, heuristic, constant, a path, models:/NAME@ALIAS "
        "('' for none) (default: %(default)s)",
    )
    p.add_argument("--baselines", default=_csv(BASELINES), help="comma-separated, any of %(default)s ('' for none)")
    p.add_argument(
        "--tasks",
        default="test",
        help="a split (test, validation, train, custom, all), domain:X, "
        "task ids, or a comma-separated mix; each item must select a task (default: %(default)s)",
    )
    p.add_argument(
        "--tasks-module",
        default="",
        help="modules that register tasks when imported, comma-separated (e.g. my_pkg.tasks); imported here "
        "and in every worker (default: none)",
    )
    p.add_argument("--lrs", default=_csv(DEFAULT_LRS), help="starting learning rates (default: %(default)s)")
    p.add_argument("--seeds", default=_csv(DEFAULT_SEEDS), help="instance seeds (default: %(default)s)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes, one torch thread each (default: 1); "
        "with --backend ray, runs in flight (default: the cluster's CPUs)",
    )
    p.add_argument(
        "--backend",
        choices=("process", "ray"),
        default="process",
        help="process: this machine (default); ray: every run a Ray task on a cluster",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster to join, HOST:PORT (default: $RAY_ADDRESS, else a local Ray runtime for this evaluation)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="output directory: rows.csv, summary.json/.md, regret_by_lr.png; rerun with the same one to resume",
    )
    p.add_argument("--budget-scale", type=float, default=1.0, help="multiply every task's step budget (default: 1)")
    p.add_argument(
        "--no-observe",
        dest="observe",
        action="store_false",
        help="never report validation losses to chuck (observe); arms become chuck:SPEC/no-observe",
    )
    p.add_argument("--oracle-lrs", default=_csv(ORACLE_LRS), help="the oracle sweep's lrs (default: %(default)s)")
    p.add_argument("--no-mlflow", dest="mlflow", action="store_false", help="do not log to MLflow")
    p.add_argument("--tracking-uri", default=None, help="MLflow store (default: chuck's local SQLite store)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "ui",
        help="open the MLflow UI on the local store (loopback only)",
        description="Serves the MLflow UI on 127.0.0.1, prints its URL once it answers (chuck's latest experiment, "
        "runs view), and stops every process it started on Ctrl-C or SIGTERM.",
    )
    p.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default: %(default)s; 0: a free one)")
    p.add_argument("--tracking-uri", default=None, help="the MLflow store (default: chuck's local SQLite store)")
    p.set_defaults(func=_cmd_ui)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
