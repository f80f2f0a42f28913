"""The ``chuck`` command line: demo, train-policy, evaluate, tune, history, ui.

``chuck --help`` must answer at once, so nothing here imports torch (or anything that
does) to build the parser: ``import chuck`` loads lazily, a subcommand's flags are built
only when that subcommand is named, the flags of the config dataclasses
(``MetaTrainConfig``, ``DemoConfig``) are read from their source without importing their
modules, and each subcommand imports its heavy dependencies only when it runs.
tests/cli/test_parser.py checks that importing this module leaves torch unloaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
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


class _NotLiteral(Exception):
    """A dataclass default that cannot be read from the source without running it."""


def _literal_default(value: Any) -> Any:
    """The default a field's right-hand side stands for: a literal, ``field(default=...)`` or
    ``field(default_factory=lambda: <literal>)``; :class:`_NotLiteral` for anything else."""
    import ast

    try:
        if isinstance(value, ast.Call) and getattr(value.func, "id", getattr(value.func, "attr", "")) == "field":
            kw = {k.arg: k.value for k in value.keywords}
            if "default" in kw:
                return ast.literal_eval(kw["default"])
            factory = kw.get("default_factory")
            if isinstance(factory, ast.Lambda):
                return ast.literal_eval(factory.body)
            raise _NotLiteral(ast.dump(value))
        return ast.literal_eval(value)
    except ValueError as exc:
        raise _NotLiteral(str(exc)) from None


def _dataclass_fields(module: str, cls_name: str) -> list[tuple[str, str, Any, str]]:
    """``(name, annotation, default, doc)`` of each field of ``module.cls_name``.

    Read from the module's source (found without importing it), so that building the parser
    does not import torch: ``chuck.metatrain.train`` and ``chuck.cli.demo`` import it at their top. The
    docs are the attribute docstrings. A default that is not a literal falls back to importing
    the module (tests/cli/test_parser.py checks both ways agree).
    """
    import ast
    import importlib.util

    spec = importlib.util.find_spec(module)
    tree = ast.parse(Path(spec.origin).read_text()) if spec is not None and spec.origin else None
    cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls_name), None) if tree else None
    if cls is None:
        return _imported_dataclass_fields(module, cls_name)
    out = []
    body = cls.body
    for node, nxt in zip(body, [*body[1:], None]):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        annotation = ast.unparse(node.annotation)
        if annotation.startswith(("ClassVar", "typing.ClassVar")):
            continue
        if node.value is None:
            return _imported_dataclass_fields(module, cls_name)
        try:
            default = _literal_default(node.value)
        except _NotLiteral:
            return _imported_dataclass_fields(module, cls_name)
        doc = ""
        if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
            doc = " ".join(nxt.value.value.split())
        out.append((node.target.id, annotation, default, doc))
    return out


def _imported_dataclass_fields(module: str, cls_name: str) -> list[tuple[str, str, Any, str]]:
    """The fallback of :func:`_dataclass_fields`: import the module and ask the dataclass."""
    import ast
    import importlib
    import inspect
    import textwrap

    cls = getattr(importlib.import_module(module), cls_name)
    docs: dict[str, str] = {}
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body  # type: ignore[attr-defined]
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())  # type: ignore[union-attr]
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc,operator]
        out.append((f.name, str(f.type), default, docs.get(f.name, "")))
    return out


def _add_dataclass_flags(
    parser: argparse.ArgumentParser,
    module: str,
    cls_name: str,
    skip: Sequence[str] = (),
    types: dict[str, Callable[[str], Any]] | None = None,
) -> None:
    """One flag per dataclass field, help text from the attribute docstrings in the source.

    The fields are read by :func:`_dataclass_fields` (no import of ``module``). ``types`` parses
    the named fields' flags (a dict or list field then takes that syntax instead of JSON). A
    docstring that states its own ``(default: ...)`` keeps it: a default computed in
    ``__post_init__`` is a rule, which ``(default: None)`` would hide.
    """
    types = types or {}
    for name, annotation, default, doc in _dataclass_fields(module, cls_name):
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        shown = "none" if name in types and not default else json.dumps(default) if isinstance(default, (dict, list)) else default
        help_ = (doc if "(default: " in doc else f"{doc} (default: {shown})").replace("%", "%%")
        if name in types:
            parser.add_argument(flag, default=default, type=_flag_type(types[name]), help=help_)
        elif isinstance(default, bool):
            parser.add_argument(flag, default=default, action=argparse.BooleanOptionalAction, help=help_)
        elif isinstance(default, (dict, list)):
            parser.add_argument(flag, default=default, type=json.loads, help=help_ + " [JSON]")
        elif default is None or "None" in annotation:
            none = "" if "(default: " in doc else " ('none' for none)"  # a stated default is what none gives
            parser.add_argument(flag, default=default, type=_optional(annotation), help=help_ + none)
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
    from chuck.metatrain.train import MetaTrainConfig, train_policy
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
    if not result.trained_now:  # a rerun: PPO learns whole rollouts, so a run can hold more than was asked
        print(f"{cfg.output} already holds {result.timesteps} timesteps (asked: {cfg.timesteps}): nothing trained")
    said = "registered as" if result.registered_now else "already registered as"
    print(f"{said} models:/{cfg.name}@{cfg.alias} (version {result.model_version}); MLflow run {result.run_id}")
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
    from chuck.cli.demo import DemoConfig, run_demo

    fields = {f.name for f in dataclasses.fields(DemoConfig)}
    try:
        cfg = DemoConfig(**{k: v for k, v in vars(args).items() if k in fields})
    except ValueError as exc:  # a bad setting or an unknown task (DemoConfig checks both): nothing has started
        print(f"chuck demo: error: {exc}", file=sys.stderr)
        return 2
    run_demo(cfg)
    return 0


def _message(exc: Exception) -> str:
    """An exception's text as said (a KeyError's str() quotes it)."""
    return str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)


def _eps_range(text: str | None) -> tuple[float, float] | None:
    """``--eps-range LOW,HIGH`` as two floats, 0 < LOW < HIGH (``None`` when not given)."""
    if not text:
        return None
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"--eps-range must be two numbers LOW,HIGH (e.g. 1e-10,1e-6), got {text!r}") from None
    if not 0 < lo < hi:
        raise ValueError(f"--eps-range must have 0 < LOW < HIGH, got {text!r}")
    return lo, hi


def _cmd_history(args: argparse.Namespace) -> int:
    from chuck.history import filter_history, history_dir, read_history
    from chuck.history.table import format_table, to_csv, to_json

    df = filter_history(
        read_history(),
        optimizer=args.optimizer,
        policy=args.policy,
        label=args.label,
        min_params=args.min_params,
        max_params=args.max_params,
        limit=args.limit,
    )
    machine = to_json if args.json else to_csv if args.csv else None
    if machine is not None:  # for machines: an empty history is an empty array or a bare header, not prose
        text = machine(df)
        target = args.json or args.csv
        if target == "-":
            sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
        else:
            Path(target).write_text(text)
            print(f"wrote {len(df)} runs to {target}", file=sys.stderr)
        return 0
    if len(df) == 0:
        print(f"no runs recorded in {history_dir()}")
        return 0
    print(format_table(df, width=args.width))
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from chuck.tuning.cold_start import TuneError, tune, zoo_instance, zoo_train_fn
    from chuck.zoo import get_task

    try:  # what can be checked before a study or an MLflow run exists
        get_task(args.task)
        if args.trials < 1:
            raise ValueError(f"--trials must be >= 1, got {args.trials}")
        eps = _eps_range(args.eps_range)
    except (ValueError, KeyError) as exc:
        print(f"chuck tune: error: {_message(exc)}", file=sys.stderr)
        return 2
    instance_seed = args.seed if args.instance_seed is None else args.instance_seed
    print("tuning " + zoo_instance(args.task, instance_seed, args.steps, args.optimizer).describe(), flush=True)
    common = {
        "n_trials": args.trials,
        "optimizer": args.optimizer,
        "study_name": args.study or f"chuck-tune-{args.task}",
        "storage": args.storage,
        "eps_range": eps,
        "tracking_uri": args.tracking_uri,
        "heartbeat_interval": args.heartbeat_interval,
    }
    try:
        if args.n_workers > 1:
            from chuck.tuning.study import tune_zoo_in_workers

            res = tune_zoo_in_workers(
                args.task,
                args.n_workers,
                seed=args.seed,
                instance_seed=instance_seed,
                steps=args.steps,
                warm_start=not args.cold,
                progress=True,
                **common,
            )
        else:
            train_fn, model = zoo_train_fn(args.task, seed=instance_seed, steps=args.steps, optimizer=args.optimizer)
            res = tune(train_fn, model=model, warm_start=not args.cold, seed=args.seed, progress=True, **common)
    except TuneError as exc:
        print(f"chuck tune: error: {exc}", file=sys.stderr)
        return 1
    assert res is not None
    print(f"best validation loss {res.best_value:.4g} after {res.trials} trials: {res.best_params}")
    if res.enqueued:
        print(f"warm-started with {len(res.enqueued)} trials from the run history: {res.warm_start_basis}")
    print(f"study {res.study_name!r} in {res.storage} (run again to resume or extend with --trials)")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from chuck.evaluation import EvaluationInputError, evaluate
    from chuck.evaluation.stats import summary_paths
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
            aa_control=args.aa_control,
        )
    except EvaluationInputError as exc:
        print(f"chuck evaluate: error: {exc}", file=sys.stderr)
        return 2
    print(summary.to_markdown())
    for w in summary.warnings:
        print(f"! {w}")
    print(
        f"{summary.rows} runs summarized ({summary.executed} executed now, {summary.oracle_executed} of them for the "
        f"oracle sweep); rows, {summary_paths(Path(summary.out), args.observe)[0].name} and the plot in {summary.out}"
    )
    if summary.mlflow_run_id:
        print(f"MLflow run {summary.mlflow_run_id} in experiment 'chuck-evaluate' (chuck ui to explore)")
    return 0


def _cmd_ui(args: argparse.Namespace) -> int:
    from chuck.tracking.store import default_tracking_uri
    from chuck.tracking.ui import run_ui

    return run_ui(args.tracking_uri or default_tracking_uri(), port=args.port)


def _train_policy_flags(p: argparse.ArgumentParser) -> None:
    from chuck.metatrain.train import parse_modules, parse_task_weights  # numpy and gymnasium, not torch

    _add_dataclass_flags(
        p,
        "chuck.metatrain.train",
        "MetaTrainConfig",
        types={"tasks_module": parse_modules, "task_weights": parse_task_weights},
    )


def _history_flags(p: argparse.ArgumentParser) -> None:
    from chuck.history.table import DEFAULT_WIDTH

    p.add_argument("--optimizer", help="only runs of this optimizer class, e.g. AdamW (default: all)")
    p.add_argument("--policy", help="only runs whose policy id contains this text (default: all)")
    p.add_argument("--label", help="only runs whose label contains this text (default: all)")
    p.add_argument("--min-params", type=int, help="only models with at least this many parameters (default: no bound)")
    p.add_argument("--max-params", type=int, help="only models with at most this many parameters (default: no bound)")
    p.add_argument("--limit", type=int, default=50, help="the N most recent runs; 0 for all (default: %(default)s)")
    out = p.add_mutually_exclusive_group()
    out.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="FILE",
        help="every recorded field of every run as a JSON array, with its outcome, to stdout or FILE (default: the table)",
    )
    out.add_argument(
        "--csv",
        nargs="?",
        const="-",
        metavar="FILE",
        help="the same as CSV with a header row, to stdout or FILE (default: the table)",
    )
    p.add_argument(
        "--width",
        type=int,
        default=DEFAULT_WIDTH,
        help="the table's width in characters: long labels and policy ids are shortened, then the least "
        "needed columns dropped (default: %(default)s)",
    )


def _tune_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, help="zoo task id, e.g. cv.digits_mlp (required)")
    p.add_argument("--trials", type=int, default=20, help="finished trials the study should reach (default: %(default)s)")
    p.add_argument("--steps", type=int, default=None, help="training steps per trial (default: the task's budget)")
    p.add_argument(
        "--optimizer", default="AdamW", help="base optimizer class: AdamW, Adam, SGD or RMSprop (default: %(default)s)"
    )
    p.add_argument(
        "--eps-range",
        default=None,
        help="'lo,hi': also search Adam's epsilon in this range (Adam family only) (default: epsilon not searched)",
    )
    p.add_argument("--study", default=None, help="Optuna study name; the same name resumes (default: chuck-tune-TASK)")
    p.add_argument(
        "--storage",
        default=None,
        help="Optuna RDB URL, e.g. postgresql://USER:PASSWORD@HOST/DB to share the study across machines "
        "(default: sqlite:///$CHUCK_HOME/optuna.db)",
    )
    p.add_argument(
        "--n-workers",
        type=int,
        default=1,
        help="worker processes sharing the study; the same command on other machines adds theirs (default: %(default)s)",
    )
    p.add_argument(
        "--heartbeat-interval",
        type=int,
        default=10,
        help="seconds between a running trial's heartbeats; a dead worker's trial is retried after 3 of them "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--cold", action="store_true", help="no warm start from the run history (default: warm start when it has similar runs)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of Optuna's sampler (default: %(default)s)")
    p.add_argument(
        "--instance-seed",
        type=int,
        default=None,
        help="seed that samples the task's instance (width, depth, activation, batch, data fraction, ...); "
        "printed before tuning starts (default: --seed)",
    )
    p.add_argument("--tracking-uri", default=None, help="MLflow store (default: chuck's local SQLite store)")


def _evaluate_flags(p: argparse.ArgumentParser) -> None:
    from chuck.evaluation import BASELINES, DEFAULT_LRS, DEFAULT_POLICIES, DEFAULT_SEEDS, ORACLE_LRS

    def _csv(xs: Sequence[object]) -> str:
        return ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in xs)

    p.add_argument(
        "--policies",
        default=_csv(DEFAULT_POLICIES),
        help="comma-separated policies: default, heuristic, constant, a path, models:/NAME@ALIAS; "
        "'recorded' for every chuck arm --out already holds in this setting (a summary of all of them, "
        "resumed) ('' for none) (default: %(default)s)",
    )
    p.add_argument("--baselines", default=_csv(BASELINES), help="comma-separated baselines ('' for none) (default: %(default)s)")
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
        help="worker processes, one torch thread each; with --backend ray, runs in flight "
        "(default: 1; with ray, the cluster's CPUs)",
    )
    p.add_argument(
        "--backend",
        choices=("process", "ray"),
        default="process",
        help="process: this machine; ray: every run a Ray task on a cluster (default: %(default)s)",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster to join, HOST:PORT (default: $RAY_ADDRESS, else a local Ray runtime for this evaluation)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="output directory: rows.csv, summary.json/.md, regret_by_lr.png (summary_no_observe.*, "
        "regret_by_lr_no_observe.png with --no-observe); rerun with the same one to resume (required)",
    )
    p.add_argument("--budget-scale", type=float, default=1.0, help="multiply every task's step budget (default: %(default)s)")
    p.add_argument(
        "--no-observe",
        dest="observe",
        action="store_false",
        help="never report validation losses to chuck (observe); arms become chuck:SPEC/no-observe "
        "(default: validation losses reported)",
    )
    p.add_argument("--oracle-lrs", default=_csv(ORACLE_LRS), help="the oracle sweep's lrs (default: %(default)s)")
    p.add_argument(
        "--aa-control",
        action="store_true",
        help="also replay each instance's references with the lr moved by +-0.1%%: what the benchmark resolves, "
        "and each arm's harm beyond it (six more runs per instance; default: off)",
    )
    p.add_argument("--no-mlflow", dest="mlflow", action="store_false", help="do not log to MLflow (default: logged)")
    p.add_argument("--tracking-uri", default=None, help="MLflow store (default: chuck's local SQLite store)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (default: a progress bar)")


def _port(text: str) -> int:
    """A TCP port for ``--port``: 0 (a free one) to 65535, refused by the parser otherwise."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: a number from 0 to 65535") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {port}: a number from 0 to 65535 (0 for a free one)")
    return port


def _ui_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=_port, default=5000, help="port on 127.0.0.1; 0 for a free one (default: %(default)s)")
    p.add_argument("--tracking-uri", default=None, help="the MLflow store (default: chuck's local SQLite store)")


@dataclasses.dataclass(frozen=True)
class _Command:
    """A subcommand: its one-line help, its description, how to add its flags and what runs it."""

    help: str
    flags: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str | None = None


COMMANDS: dict[str, _Command] = {
    "train-policy": _Command(
        "meta-train a policy with PPO over zoo (and your) tasks",
        lambda p: _train_policy_flags(p),
        _cmd_train_policy,
    ),
    "demo": _Command(
        "train a zoo task twice (plain AdamW vs chuck) and compare",
        lambda p: _add_dataclass_flags(p, "chuck.cli.demo", "DemoConfig"),
        _cmd_demo,
    ),
    "history": _Command(
        "show the run history: a table, or JSON/CSV",
        _history_flags,
        _cmd_history,
        "One row per recorded run, most recent last: when, label, policy, model size, optimizer, lr at "
        "the start and the end, steps, the final loss (validation if reported, else training) and the "
        "outcome (ok, diverged, collapsed: ended far above its best). --json and --csv carry every field.",
    ),
    "tune": _Command(
        "Optuna cold start on a zoo task (warm-started from the history)",
        _tune_flags,
        _cmd_tune,
        "Tunes lr, weight decay and clip (and epsilon with --eps-range) on one sampled instance of a zoo "
        "task, printed before the first trial (--instance-seed picks another). Resumes a study of the "
        "same name.",
    ),
    "evaluate": _Command(
        "chuck policies vs baseline optimizers: regret against an lr-sweep oracle",
        _evaluate_flags,
        _cmd_evaluate,
        "Every arm trains the same task instances (task, seed) from every starting lr; "
        "regret = final validation loss / the best of an lr sweep. Resumes in --out.",
    ),
    "ui": _Command(
        "open the MLflow UI on the local store (loopback only)",
        _ui_flags,
        _cmd_ui,
        "Serves the MLflow UI on 127.0.0.1, prints its URL once it answers (chuck's latest experiment, "
        "runs view), and stops every process it started on Ctrl-C or SIGTERM.",
    ),
}


def build_parser(commands: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``chuck`` parser; only the subcommands in ``commands`` get their flags (``None``: all).

    ``chuck --help`` needs none of them, and building some (``evaluate`` reads its defaults
    from :mod:`chuck.evaluation`) imports torch: :func:`main` builds only the one named.
    """
    from chuck import __version__  # chuck loads lazily: no torch

    parser = argparse.ArgumentParser(prog="chuck", description="chuck: a learned meta-policy for neural-network training")
    parser.add_argument("--version", action="version", version=f"chuck {__version__}", help="print chuck's version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.description or cmd.help)
        if commands is None or name in commands:
            cmd.flags(p)
        p.set_defaults(func=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # the top-level parser has no option that takes a value: the first bare word names the command
    named = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser([named] if named in COMMANDS else []).parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
