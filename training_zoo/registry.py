"""The task registry: built-in families, declared splits, and user (in-house) tasks.

Splits are by *family*, never by seed, so validation and test numbers measure
generalization to tasks the meta-policy never trained on. Each split spans the
four domains (CV, NLP, RL, tabular); about 60% / 20% / 20% of the families:

* ``train``: every built-in family not listed below; the policy learns from these.
* ``validation``: :data:`VALIDATION`; checkpoint and design selection (which policy,
  which recipe), so it is looked at often and must not be reported as a result.
* ``test``: :data:`TEST`; reported, never used to choose anything.

Users add tasks with :func:`register_task` (at import time of their code), or
ship them in a package under the ``chuck.tasks`` entry-point group, each entry
point naming a :class:`~chuck.zoo.task.Task` subclass or instance; those land
in the ``"custom"`` split unless registered otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import entry_points

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
)
TEST = (
    "cv.shapes_vit",
    "cv.glyphs_many_cnn",
    "nlp.markov_lstm",
    "nlp.topic_fewshot_transformer",
    "rl.cartpole_dqn",
    "tabular.noisy_labels_mlp",
    "tabular.residual_mlp",
)
#: Split names accepted by :func:`register_task` (``"all"`` is only a selector).
SPLITS = ("train", "validation", "test", "custom")
ENTRY_POINT_GROUP = "chuck.tasks"

_TASKS: dict[str, Task] = {}
_SPLIT: dict[str, str] = {}
_entry_points_loaded = False


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
    """Task ids in a split: ``"train"``, ``"validation"``, ``"test"``, ``"custom"`` or ``"all"``."""
    _ensure()
    if split == "all":
        return sorted(_TASKS)
    if split not in SPLITS:
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
        if item in SPLITS or item == "all":
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
