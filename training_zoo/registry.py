"""The task registry: built-in families, declared splits, and user (in-house) tasks.

Splits are by *family*, never by seed, so validation and test numbers measure
generalization to tasks the meta-policy never trained on. Each split spans the
four domains (CV, NLP, RL, tabular); about 60% / 20% / 20% of the families:

* ``train``: every built-in family not listed below; the policy learns from these.
* ``validation``: :data:`VALIDATION`; checkpoint and design selection (which policy,
  which recipe), so it is looked at often and must not be reported as a result.
* ``test``: :data:`TEST`; reported, never used to choose anything.

Users add tasks with :func:`register_task` at import time of a module of theirs,
and name that module to chuck: ``chuck train-policy --tasks-module my_pkg.tasks``,
:func:`import_task_modules`, or the ``CHUCK_TASKS_MODULES`` environment variable
(comma-separated module names), which every process that looks a task up honours, so
worker processes started by chuck import the modules too. A package can instead ship
tasks under the ``chuck.tasks`` entry-point group, each entry point naming a
:class:`~chuck.zoo.task.Task` subclass or instance. User tasks land in the
``"custom"`` split unless registered otherwise.

A registration lives in the process that made it: one made by a script run before
``chuck train-policy`` is not there when the command runs. A split or domain that matches
nothing is therefore an error of :func:`resolve_tasks`, never an empty selection: a
``"custom"`` split that silently selected nothing would train a policy on the zoo alone.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path

from chuck.zoo.task import Task

# Chosen so that each split holds one family per domain or more, and mixes the axes: the
# validation and test sets each get a residual or attention net, a recurrent net, a
# regression, a noisy or tiny data set, and an RL algorithm the train split has a sibling of.
VALIDATION = (
    "cv.textures_resnet",
    "cv.digits_fewshot_mlp",
    "nlp.brackets_transformer",
    "nlp.charlm_rnn",
    "rl.cartpole_a2c",
    "tabular.wine_mlp",
    "tabular.friedman3_small_scale",
    "tabular.sparse_parity_mlp",
)
TEST = (
    "cv.shapes_vit",
    "cv.glyphs_many_cnn",
    "nlp.markov_lstm",
    "nlp.topic_fewshot_transformer",
    "rl.cartpole_dqn",
    "tabular.noisy_labels_mlp",
    "tabular.residual_mlp",
    "nlp.memory_lstm",
)
#: Split names accepted by :func:`register_task` (``"all"`` is only a selector).
SPLITS = ("train", "validation", "test", "custom")
ENTRY_POINT_GROUP = "chuck.tasks"
#: Environment variable naming modules (comma-separated) that register tasks when imported.
MODULES_ENV = "CHUCK_TASKS_MODULES"

#: What to do when a selection is empty: every message of an empty split or domain ends with it.
HOW_TO_REGISTER = (
    "register them in the process that trains: --tasks-module MODULE (a module that calls "
    "chuck.zoo.register_task when imported; chuck imports it here and in every worker), "
    f"${MODULES_ENV}=MODULE, or a package entry point in the {ENTRY_POINT_GROUP!r} group "
    "(a register_task call in another Python process, such as a script run before this command, is not seen here)"
)

_TASKS: dict[str, Task] = {}
_SPLIT: dict[str, str] = {}
_entry_points_loaded = False
_modules_imported: set[str] = set()


class TaskSpecError(ValueError):
    """A task spec that selects nothing, or something that is not there; the message says what to do."""


def register_task(task: Task | type[Task], *, split: str = "custom", replace: bool = False) -> Task:
    """Add a task to the registry (instances or classes with a no-argument constructor).

    Args:
        split: ``"train"``, ``"validation"``, ``"test"`` or ``"custom"`` (the default for user tasks).
        replace: allow overriding an existing id.
    """
    obj = task() if isinstance(task, type) else task
    if not isinstance(obj, Task):
        raise TypeError(f"register_task needs a chuck.zoo.Task, got {type(obj).__name__}")
    if not obj.id or "." not in obj.id:
        raise ValueError(f"task id must look like '<domain>.<name>', got {obj.id!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if obj.id in _TASKS and not replace:
        raise ValueError(f"a task with id {obj.id!r} is already registered (pass replace=True to override)")
    if obj.budget < 2:
        raise ValueError(f"task {obj.id!r}: budget must be at least 2 steps")
    _TASKS[obj.id] = obj
    _SPLIT[obj.id] = split
    return obj


def unregister_task(task_id: str) -> None:
    """Remove a task (a user's; built-in families come back on the next registry load)."""
    _TASKS.pop(task_id, None)
    _SPLIT.pop(task_id, None)


def _load_builtins() -> None:
    if any(s != "custom" for s in _SPLIT.values()):
        return
    from chuck.zoo.families import builtin_families

    for cls in builtin_families():
        split = "validation" if cls.id in VALIDATION else "test" if cls.id in TEST else "train"
        register_task(cls, split=split, replace=True)


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        obj = ep.load()
        if callable(obj) and not isinstance(obj, (Task, type)):
            obj = obj()
        if obj is not None and not (isinstance(obj, Task) and obj.id in _TASKS):
            register_task(obj, split="custom", replace=True)


def _module_names(names: str | Sequence[str]) -> list[str]:
    items = names.split(",") if isinstance(names, str) else list(names)
    return [n.strip() for n in items if n and n.strip()]


def _import_module(name: str) -> None:
    """Import ``name``; a module that is not on ``sys.path`` is looked up in the working directory too.

    The ``chuck`` console script's ``sys.path`` does not hold the working directory (``python -m``
    would), yet ``--tasks-module my_tasks`` next to ``my_tasks.py`` is what a user types first.
    Errors raised inside the module (a missing dependency included) propagate unchanged, with
    their traceback: they are the user's to fix, and the traceback says where.
    """
    if name.endswith(".py") or "/" in name or "\\" in name or name.startswith("."):
        # importlib would fail with "the 'package' argument is required to perform a relative import"
        module = Path(name).stem if name.endswith(".py") else "MODULE"
        raise TaskSpecError(
            f"{name!r} is a file path; a tasks module is named as for import, e.g. {module!r} (run from the "
            "directory that holds it, or add that directory to PYTHONPATH)"
        )
    for attempt in (0, 1):
        try:
            importlib.import_module(name)
            return
        except ModuleNotFoundError as exc:
            if exc.name is None or not (name == exc.name or name.startswith(exc.name + ".")):
                raise  # the module was found; something it imports was not
            cwd = os.getcwd()
            if attempt or cwd in sys.path or "" in sys.path:
                raise TaskSpecError(
                    f"no tasks module {name!r}: it is neither on sys.path nor in the working directory {cwd} "
                    "(install its package, or add its directory to PYTHONPATH)"
                ) from None
            sys.path.append(cwd)


def import_task_modules(names: str | Sequence[str]) -> list[str]:
    """Import modules that register tasks, here and in every process started from here.

    Each module is imported now (so its :func:`register_task` calls run in this process) and its
    name is added to ``$CHUCK_TASKS_MODULES``, which child processes inherit and the registry of
    every process imports on first use: process pools and subprocess environments then see the
    same tasks. Meta-training also imports them explicitly in each environment worker (a Ray
    actor on another machine does not inherit this environment).

    Args:
        names: module names, as a sequence or comma-separated.

    Returns:
        The module names, in order.

    Raises:
        TaskSpecError: a module is not found (the message says where chuck looked); an error raised
            inside a module propagates as it is.
    """
    wanted = _module_names(names)
    _ensure()  # the built-ins first: a module may look tasks up, or replace one
    for name in wanted:
        if name not in _modules_imported:
            _modules_imported.add(name)
            try:
                _import_module(name)
            except BaseException:
                _modules_imported.discard(name)
                raise
    listed = _module_names(os.environ.get(MODULES_ENV, ""))
    if any(n not in listed for n in wanted):
        os.environ[MODULES_ENV] = ",".join(listed + [n for n in wanted if n not in listed])
    return wanted


def _load_env_modules() -> None:
    for name in _module_names(os.environ.get(MODULES_ENV, "")):
        if name not in _modules_imported:
            _modules_imported.add(name)  # before importing: the module may look tasks up itself
            try:
                _import_module(name)
            except TaskSpecError as exc:
                raise TaskSpecError(f"{exc} (named in ${MODULES_ENV})") from exc


def _ensure() -> None:
    _load_builtins()
    _load_entry_points()
    _load_env_modules()


def get_task(task_id: str) -> Task:
    _ensure()
    try:
        return _TASKS[task_id]
    except KeyError:
        raise KeyError(f"no task {task_id!r}; registered: {sorted(_TASKS)}") from None


def split_of(task_id: str) -> str:
    _ensure()
    return _SPLIT[task_id]


def list_tasks(split: str = "all") -> list[str]:
    """Task ids in a split: ``"train"``, ``"validation"``, ``"test"``, ``"custom"`` or ``"all"``."""
    _ensure()
    if split == "all":
        return sorted(_TASKS)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}")
    return sorted(t for t, s in _SPLIT.items() if s == split)


def resolve_tasks(spec: str | Sequence[str]) -> list[Task]:
    """Tasks from a split name, a domain (``"domain:cv"``), ids, or a comma-separated mix.

    Every item must select something: a split or domain with no task in this process, or an
    unknown id, raises :class:`TaskSpecError` even when the other items select tasks, since
    training on part of what was asked for looks like success and is not.
    """
    _ensure()
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[Task] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        if item in SPLITS or item == "all":
            ids = list_tasks(item)
            if not ids:
                raise TaskSpecError(f"split {item!r} holds no task in this process: {HOW_TO_REGISTER}")
        elif item.startswith("domain:"):
            domain = item.split(":", 1)[1]
            ids = sorted(t for t, task in _TASKS.items() if task.domain == domain)
            if not ids:
                known = sorted({task.domain for task in _TASKS.values()})
                raise TaskSpecError(f"domain {domain!r} holds no task in this process (domains: {known}): {HOW_TO_REGISTER}")
        elif item in _TASKS:
            ids = [item]
        else:
            close = difflib.get_close_matches(item, list(_TASKS), n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise TaskSpecError(
                f"no task {item!r} in this process{hint} (a split: {', '.join(SPLITS)}, all; a domain: domain:NAME; "
                f"or a task id: chuck.zoo.list_tasks()); if it is yours, {HOW_TO_REGISTER}"
            )
        for i in ids:
            task = _TASKS[i]
            if task not in out:
                out.append(task)
    if not out:
        raise TaskSpecError(f"task spec {spec!r} selects no task")
    return out
