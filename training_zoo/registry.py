"""The task registry: built-in families, declared splits, and user (in-house) tasks.

Splits are by *family*, never by seed, so held-out numbers measure
generalization to tasks the meta-policy never trained on. One held-out family
per domain:

* train: every built-in family not listed below
* heldout: cv.textures_resnet, nlp.brackets_transformer, rl.cartpole_a2c, tabular.wine_mlp

Users add tasks with :func:`register_task` (at import time of their code), or
ship them in a package under the ``chuck.tasks`` entry-point group, each entry
point naming a :class:`~chuck.zoo.task.Task` subclass or instance; those land
in the ``"custom"`` split.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import entry_points

from chuck.zoo.task import Task

HELDOUT = ("cv.textures_resnet", "nlp.brackets_transformer", "rl.cartpole_a2c", "tabular.wine_mlp")
ENTRY_POINT_GROUP = "chuck.tasks"

_TASKS: dict[str, Task] = {}
_SPLIT: dict[str, str] = {}
_entry_points_loaded = False


def register_task(task: Task | type[Task], *, split: str = "custom", replace: bool = False) -> Task:
    """Add a task to the registry (instances or classes with a no-argument constructor).

    Args:
        split: ``"train"``, ``"heldout"`` or ``"custom"`` (the default for user tasks).
        replace: allow overriding an existing id.
    """
    obj = task() if isinstance(task, type) else task
    if not isinstance(obj, Task):
        raise TypeError(f"register_task needs a chuck.zoo.Task, got {type(obj).__name__}")
    if not obj.id or "." not in obj.id:
        raise ValueError(f"task id must look like '<domain>.<name>', got {obj.id!r}")
    if split not in ("train", "heldout", "custom"):
        raise ValueError(f"split must be 'train', 'heldout' or 'custom', got {split!r}")
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
    from chuck.zoo.families import cv, nlp, rl, tabular

    for module in (cv, nlp, rl, tabular):
        for cls in module.FAMILIES:
            register_task(cls, split="heldout" if cls.id in HELDOUT else "train", replace=True)


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


def _ensure() -> None:
    _load_builtins()
    _load_entry_points()


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
    """Task ids in a split: ``"train"``, ``"heldout"``, ``"custom"`` or ``"all"``."""
    _ensure()
    if split == "all":
        return sorted(_TASKS)
    if split not in ("train", "heldout", "custom"):
        raise ValueError(f"unknown split {split!r}")
    return sorted(t for t, s in _SPLIT.items() if s == split)


def resolve_tasks(spec: str | Sequence[str]) -> list[Task]:
    """Tasks from a split name, a domain (``"domain:cv"``), ids, or a comma-separated mix."""
    _ensure()
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[Task] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        if item in ("train", "heldout", "custom", "all"):
            ids = list_tasks(item)
        elif item.startswith("domain:"):
            ids = sorted(t for t, task in _TASKS.items() if task.domain == item.split(":", 1)[1])
        else:
            ids = [item]
        for i in ids:
            task = get_task(i)
            if task not in out:
                out.append(task)
    if not out:
        raise ValueError(f"task spec {spec!r} selects no task")
    return out
