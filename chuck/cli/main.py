"""The ``chuck`` command line: demo, train-policy, evaluate, tune, history, ui.

``chuck --help`` must answer at once, so importing this module and building the parser
import no torch (nor anything that does): ``import chuck`` loads lazily, a subcommand's flags
are built only when that subcommand is named, the config dataclasses whose fields are flags
(:mod:`chuck.cli.config`) import only the standard library, and each subcommand imports its
heavy dependencies only when it runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from chuck.cli.config import DemoConfig, MetaTrainConfig, field_default, field_docs, parse_modules, parse_task_weights


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
    """One flag per field of the config dataclass ``cls``, its help the field's attribute docstring.

    ``types`` parses the named fields' flags (a dict or list field then takes that syntax instead
    of JSON). A docstring that states its own ``(default: ...)`` keeps it: a default computed in
    ``__post_init__`` is a rule, which ``(default: None)`` would hide.
    """
    types = types or {}
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        name, annotation, default, doc = f.name, str(f.type), field_default(f), docs.get(f.name, "")
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
    from chuck.core.loading import PolicyLoadError
    from chuck.metatrain.train import SettingsConflict, train_policy
    from chuck.zoo import TaskSpecError

    fields = {f.name for f in dataclasses.fields(MetaTrainConfig)}
    try:
        cfg = MetaTrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    except ValueError as exc:  # a bad setting (an unknown backend, ...)
        print(f"chuck train-policy: error: {exc}", file=sys.stderr)
        return 2
    if isinstance(status := _tracking_store("train-policy", cfg.tracking_uri), int):
        return status
    if not _writable_directory("train-policy", "--output", cfg.output):
        return 2
    try:
        result = train_policy(cfg)
    except ImportError as exc:  # a missing optional dependency (Ray for --backend ray): the message says what to install
        print(f"chuck train-policy: error: {exc}", file=sys.stderr)
        return 2
    except (TaskSpecError, SettingsConflict) as exc:  # raised before anything starts: no run, no file
        print(f"chuck train-policy: error: {exc}", file=sys.stderr)
        return 2
    except PolicyLoadError as exc:  # --init-policy: missing, corrupt or not a policy; checked before training
        print(f"chuck train-policy: error: --init-policy: {exc}", file=sys.stderr)
        return 2
    last = result.evaluations[-1] if result.evaluations else {}
    print(f"policy exported to {result.artifact_dir}")
    if not result.trained_now:  # a rerun: PPO learns whole rollouts, so a run can hold more than was asked
        print(f"{cfg.output} already holds {result.timesteps} timesteps (asked: {cfg.timesteps}): nothing trained")
    said = "registered as" if result.registered_now else "already registered as"
    print(f"{said} models:/{cfg.name}@{cfg.alias} (version {result.model_version}); MLflow run {result.run_id}")
    from chuck.metatrain.comparison import summary_lines

    lines = summary_lines(result.comparison, f"models:/{cfg.name}@{cfg.alias}", result.heldout_seeds)
    if lines:
        print("\n".join(lines))
    elif last:
        print(
            f"held-out return {last['heldout_return']:+.3f} vs constant {last['constant_return']:+.3f} "
            f"(advantage {last['advantage']:+.3f})"
        )
    if result.lost_episodes:
        print(f"{result.lost_episodes} episode(s) lost to dead environment actors were retried")
    print(f"load it with chuck.load_policy({str(result.artifact_dir)!r}) or chuck.load_policy('models:/{cfg.name}@{cfg.alias}')")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from chuck.cli.demo import run_demo

    fields = {f.name for f in dataclasses.fields(DemoConfig)}
    try:
        cfg = DemoConfig(**{k: v for k, v in vars(args).items() if k in fields})
    except ValueError as exc:  # a bad setting or an unknown task (DemoConfig checks both): nothing has started
        print(f"chuck demo: error: {exc}", file=sys.stderr)
        return 2
    if isinstance(status := _tracking_store("demo", cfg.tracking_uri), int):
        return status
    run_demo(cfg)
    return 0


def _message(exc: Exception) -> str:
    """An exception's text as said (a KeyError's str() quotes it)."""
    return str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)


def _tracking_store(command: str, given: str | None, *, answering: bool = True) -> str | int:
    """The MLflow store ``command`` will use, or the exit status after saying on stderr, in one line, why
    it cannot: a URI that names no store (``$MLFLOW_TRACKING_URI`` included), an unusable ``CHUCK_HOME``
    or a local store a newer MLflow migrated (2); with ``answering``, a tracking
    server that does not answer (1), at once: the MLflow client would retry it for minutes."""
    from chuck.tracking.schema import StoreSchemaError, check_store_schema
    from chuck.tracking.store import check_reachable, check_tracking_uri, resolve_tracking_uri

    try:
        uri = check_tracking_uri(resolve_tracking_uri(given))
        check_store_schema(uri)
    except (ValueError, OSError, StoreSchemaError) as exc:
        print(f"chuck {command}: error: {exc}", file=sys.stderr)
        return 2
    try:
        if answering:
            check_reachable(uri)
    except ConnectionError as exc:
        print(f"chuck {command}: error: {exc}", file=sys.stderr)
        return 1
    return uri


def _writable_directory(command: str, flag: str, path: str | Path) -> bool:
    """Whether ``path`` is a directory this process can write, or one it can create (nothing is created
    here: a command refused later must leave nothing behind); if not, says why on stderr."""
    import os

    target = Path(path).expanduser().absolute()
    existing = next(p for p in (target, *target.parents) if p.exists())
    if not existing.is_dir():
        why = f"{existing} is not a directory"
    elif not os.access(existing, os.W_OK | os.X_OK):
        why = f"{existing} is not writable"
    else:
        return True
    print(f"chuck {command}: error: {flag} {path}: cannot write there ({why})", file=sys.stderr)
    return False


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

    try:
        frame = read_history()
    except OSError as exc:  # CHUCK_HOME unusable
        print(f"chuck history: error: {exc}", file=sys.stderr)
        return 1
    df = filter_history(
        frame,
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
            try:
                Path(target).write_text(text)
            except OSError as exc:
                flag = "--json" if args.json else "--csv"
                print(f"chuck history: error: {flag} {target}: cannot write it ({exc.strerror or exc})", file=sys.stderr)
                return 1
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
        if args.steps is not None and args.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {args.steps}")
        eps = _eps_range(args.eps_range)
    except (ValueError, KeyError) as exc:
        print(f"chuck tune: error: {_message(exc)}", file=sys.stderr)
        return 2
    if isinstance(status := _tracking_store("tune", args.tracking_uri), int):
        return status
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
            from chuck.tuning.workers import tune_zoo_in_workers

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
    except (TuneError, ConnectionError) as exc:  # a storage that cannot be opened, an MLflow server that does not answer
        print(f"chuck tune: error: {exc}", file=sys.stderr)
        return 1
    assert res is not None
    print(f"best validation loss {res.best_value:.4g} after {res.trials} trials: {res.best_params}")
    if res.enqueued:
        n = len(res.enqueued)
        print(f"warm-started with {n} trial{'s' if n != 1 else ''} from the run history: {res.warm_start_basis}")
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
    if not _writable_directory("evaluate", "--out", args.out):
        return 2
    if args.mlflow and isinstance(status := _tracking_store("evaluate", args.tracking_uri), int):
        return status
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
            base_optimizers=args.base_optimizer,
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
    from chuck.tracking.ui import run_ui

    uri = _tracking_store("ui", args.tracking_uri, answering=False)  # the UI serves the store itself
    if isinstance(uri, int):
        return uri
    return run_ui(uri, port=args.port)


def _train_policy_flags(p: argparse.ArgumentParser) -> None:
    _add_dataclass_flags(p, MetaTrainConfig, types={"tasks_module": parse_modules, "task_weights": parse_task_weights})


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
    from chuck.evaluation import BASELINES, DEFAULT_LRS, DEFAULT_POLICIES, DEFAULT_SEEDS, LR_SHIFT, ORACLE_LRS
    from chuck.zoo.task import BASE_OPTIMIZERS

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
    by_factor: dict[float, list[str]] = {}
    for base, factor in LR_SHIFT.items():
        by_factor.setdefault(factor, []).append(base)
    shifts = "; ".join(f"x{factor:g} for {' and '.join(bases)}" for factor, bases in by_factor.items())
    p.add_argument(
        "--lrs",
        default=None,
        help="starting learning rates, used as given for every base optimizer (default: "
        f"{_csv(DEFAULT_LRS)}, shifted per base optimizer: {shifts})",
    )
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
    p.add_argument(
        "--oracle-lrs",
        default=None,
        help="the oracle sweep's lrs, used as given for every base optimizer (default: "
        f"{len(ORACLE_LRS)} lrs from {min(ORACLE_LRS):g} to {max(ORACLE_LRS):g} a half decade apart, "
        "shifted per base optimizer as --lrs is)",
    )
    p.add_argument(
        "--base-optimizer",
        default="AdamW",
        help=f"comma-separated base optimizers, each its own set of instances ({', '.join(BASE_OPTIMIZERS)}): the "
        "arms adamw (the base at a constant lr), cosine, plateau and chuck, and the oracle sweep, train it; "
        "schedulefree, prodigy, prodigy-sf and ldog bring their own optimizer. Every figure is reported per base "
        "and pooled (default: %(default)s)",
    )
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


#: ``chuck train-policy --help``'s epilog: the in-house workflow of docs/retraining.md in brief.
RETRAINING_EPILOG = """\
retraining on your own tasks (docs/retraining.md):
  1. Register your task: a module that calls chuck.zoo.register_task(MyTask) when imported
     (declare best_lr on the class, or measure it: python -m chuck.zoo.calibrate --tasks-module M).
  2. chuck train-policy --tasks-module M --init-policy default --output runs/mine --name mine
     trains on your tasks and the zoo's train families (--zoo-share 0.5: half the episodes are
     yours), keeps what default knew (its prior, the observation ranges it was trained on, its
     normalization merged with the new run's), and evaluates on held-out instances of your tasks
     (seeds no training environment is seeded with): the retrained policy, default and holding,
     paired; the learning curve starts at default (timestep 0) and has min(5, PPO updates) points.
  3. It ends with the retrained policy's final validation loss over default's on those instances:
     geometric mean of the paired ratios [95% bootstrap interval], lower on K of N, and a verdict:
     better (interval below 1: load models:/mine@candidate), worse, or no clear difference (keep
     default; more --timesteps and --eval-episodes).
  Measured (docs/retraining.md): experiments/inhouse_example.py, a 1-D CNN of up to 17k parameters,
  --timesteps 2048 --eval-episodes 16 on 2 CPU cores: retrained / default 1.000 [0.994, 1.006],
  lower on 8 of 16, no clear difference (keep default); 3 min 22 s.
"""


@dataclasses.dataclass(frozen=True)
class _Command:
    """A subcommand: its one-line help, its description, how to add its flags and what runs it."""

    help: str
    flags: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str | None = None
    epilog: str | None = None
    """Shown after the flags, as written (line breaks kept)."""


COMMANDS: dict[str, _Command] = {
    "train-policy": _Command(
        "meta-train a policy with PPO over zoo (and your) tasks",
        lambda p: _train_policy_flags(p),
        _cmd_train_policy,
        epilog=RETRAINING_EPILOG,
    ),
    "demo": _Command(
        "train a zoo task twice (plain AdamW vs chuck) and compare",
        lambda p: _add_dataclass_flags(p, DemoConfig),
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
        "Every arm trains the same task instances (task, seed, base optimizer) from every starting lr; "
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
        formatter = argparse.RawDescriptionHelpFormatter if cmd.epilog else argparse.HelpFormatter
        p = sub.add_parser(
            name, help=cmd.help, description=cmd.description or cmd.help, epilog=cmd.epilog, formatter_class=formatter
        )
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
