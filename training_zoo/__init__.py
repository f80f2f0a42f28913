"""The training zoo: tasks the meta-policy learns from, and the API to add your own.

>>> from chuck import zoo
>>> len(zoo.list_tasks("train")) >= 8
True
"""

from chuck.zoo.registry import (
    SPLITS,
    TEST,
    VALIDATION,
    TaskSpecError,
    get_task,
    import_task_modules,
    list_tasks,
    register_task,
    resolve_tasks,
    split_of,
    unregister_task,
)
from chuck.zoo.starting_lr import FALLBACK_LR, LR_REGIMES, OPTIMIZER_LR_OFFSET
from chuck.zoo.task import (
    OPTIMIZERS,
    SearchSpace,
    SupervisedInstance,
    Task,
    TaskConfig,
    TaskInstance,
    make_optimizer,
    split_train_val,
)

__all__ = [
    "FALLBACK_LR",
    "LR_REGIMES",
    "OPTIMIZERS",
    "OPTIMIZER_LR_OFFSET",
    "SPLITS",
    "SearchSpace",
    "SupervisedInstance",
    "TEST",
    "TaskSpecError",
    "Task",
    "TaskConfig",
    "TaskInstance",
    "VALIDATION",
    "get_task",
    "list_tasks",
    "make_optimizer",
    "register_task",
    "import_task_modules",
    "resolve_tasks",
    "split_of",
    "split_train_val",
    "unregister_task",
]
