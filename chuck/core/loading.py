"""``load_policy``: one entry point for every way a policy is named.

* ``"constant"``, ``"heuristic"``: built-in rule policies.
* ``"default"``: the learned PPO policy shipped as package data (chuck/policies/artifacts/default).
* a path to an exported policy directory (``policy.json`` + ``policy.pt``).
* ``"models:/NAME@ALIAS"`` or ``"models:/NAME/VERSION"``: a policy registered in MLflow
  (needs mlflow; downloaded to a temporary folder, loaded like a path, folder removed),
  from the store :func:`chuck.tracking.store.resolve_tracking_uri` names: ``MLFLOW_TRACKING_URI``
  or else ``$CHUCK_HOME/mlflow.db``, where ``chuck train-policy`` registers.
* a name given to :func:`register_policy` (policies chuck does not ship, such as the step-size
  prior's rejected versions in ``experiments/lab_policies.py``).

Loading never runs pickle: weights go through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: chuck.policies imports this module for register_policy
    from chuck.policies.base import Policy

BUILTIN = ("constant", "heuristic", "prior", "prior@VERSION")

#: Policies registered by name (:func:`register_policy`): name -> a function that builds one.
_REGISTERED: dict[str, Callable[[], Policy]] = {}


def is_builtin(name: str) -> bool:
    """True for a policy name chuck resolves itself (not a path): the built-ins, ``prior@N``, ``default``
    and the names given to :func:`register_policy`."""
    if name in BUILTIN or name == "default" or name in _REGISTERED:
        return True
    base, _, version = name.partition("@")
    return base == "prior" and version.isdigit()


class PolicyLoadError(ValueError):
    """A policy artifact is missing, corrupt, truncated or does not match this chuck."""


def register_policy(name: str, factory: Callable[[], Policy], *, replace: bool = False) -> None:
    """Make ``load_policy(name)`` return ``factory()``, a new policy each time.

    For policies chuck does not ship but a command should name like a built-in, e.g.
    ``chuck evaluate --policies prior@4 --tasks-module experiments.lab_policies``: register them in a
    module that ``--tasks-module`` names. That module is imported in the command's process and named in
    ``$CHUCK_TASKS_MODULES`` to the processes it starts, and a process asked for a name it does not
    know imports those modules first, so evaluation workers know the name too. A registered name can
    also be a learned policy's ``prior`` (its card's field) and the meta-environment's ``prior``.

    Raises:
        ValueError: ``name`` is one chuck resolves itself (``constant``, ``heuristic``, ``default``,
            ``prior`` and the shipped ``prior@N``) or an MLflow URI, or it is registered already and
            ``replace`` is false.
    """
    from chuck.policies.prior import CONFIGS

    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a policy name is a non-empty string, got {name!r}")
    shipped = {"constant", "heuristic", "default", "prior", *(f"prior@{v}" for v in CONFIGS)}
    if name in shipped or name.startswith("models:/"):
        raise ValueError(f"{name!r} names a policy chuck ships or fetches itself; register it under another name")
    if name in _REGISTERED and not replace:
        raise ValueError(f"a policy named {name!r} is registered already (pass replace=True to replace it)")
    _REGISTERED[name] = factory


def unregister_policy(name: str) -> None:
    """Forget a name given to :func:`register_policy` (nothing happens for a name never registered)."""
    _REGISTERED.pop(name, None)


def is_registered(name: str) -> bool:
    """Whether ``name`` was given to :func:`register_policy`, in this process or, once the modules
    ``$CHUCK_TASKS_MODULES`` names are imported, in the command that started it."""
    if name not in _REGISTERED:
        _import_command_modules()
    return name in _REGISTERED


def _import_command_modules() -> None:
    """Import the modules the command's ``--tasks-module`` named (``$CHUCK_TASKS_MODULES``), which may
    register policies: a worker process that got its tasks by value has not imported them yet."""
    from chuck.zoo.registry import MODULES_ENV, TaskSpecError, import_task_modules

    names = os.environ.get(MODULES_ENV, "")
    if names.strip():
        try:
            import_task_modules(names)
        except TaskSpecError as exc:
            raise PolicyLoadError(str(exc)) from None


def _load_registered(name: str) -> Policy:
    from chuck.policies.base import Policy

    policy = _REGISTERED[name]()
    if not isinstance(policy, Policy):
        raise PolicyLoadError(f"the policy registered as {name!r} built a {type(policy).__name__}, not a chuck Policy")
    return policy


def _by_version(version: str) -> tuple[bool, int, str]:
    return (not version.isdigit(), int(version) if version.isdigit() else 0, version)


def load_policy(name_or_path: str | Path) -> Policy:
    """Load a policy by name, path or MLflow model URI. See the module docstring."""
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path).strip():
        raise PolicyLoadError(
            f"a policy is named by a non-empty string or a path, got {name_or_path!r}: use one of "
            f"{BUILTIN + ('default',)}, a path to an exported policy directory, or 'models:/NAME@ALIAS'"
        )
    if isinstance(name_or_path, str):
        if name_or_path == "constant":
            from chuck.policies.constant import ConstantPolicy

            return ConstantPolicy()
        if name_or_path == "heuristic":
            from chuck.policies.heuristic import HeuristicPolicy

            return HeuristicPolicy()
        if name_or_path == "prior" or name_or_path.startswith("prior@"):
            from chuck.policies.prior import CONFIGS, StepSizePrior

            version = name_or_path.partition("@")[2] or None
            if version is None or version in CONFIGS:
                return StepSizePrior() if version is None else StepSizePrior(version=version)
            if not is_registered(name_or_path):
                known = sorted([*CONFIGS, *(n.partition("@")[2] for n in _REGISTERED if n.startswith("prior@"))], key=_by_version)
                raise PolicyLoadError(
                    f"unknown prior version {version!r}: use one of {known} (the rejected versions of the "
                    "ablation load with --tasks-module experiments.lab_policies)"
                )
            return _load_registered(name_or_path)
        if name_or_path == "default":
            from chuck.policies.artifact import bundled_artifact_dir

            return _load_dir(bundled_artifact_dir("default"))
        if name_or_path.startswith("models:/"):
            from chuck.policies.registry import load_registered_policy

            return load_registered_policy(name_or_path)
    if isinstance(name_or_path, str) and name_or_path in _REGISTERED:
        return _load_registered(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.exists():
        return _load_dir(path)
    if isinstance(name_or_path, str) and is_registered(name_or_path):
        return _load_registered(name_or_path)
    spelled = os.fspath(name_or_path)
    if not isinstance(name_or_path, str) or any(c in spelled for c in "/\\") or spelled.startswith((".", "~")):
        raise PolicyLoadError(f"no policy directory at {str(path)!r}: nothing exists there")
    raise PolicyLoadError(
        f"unknown policy {str(name_or_path)!r}: use one of {BUILTIN + ('default',)}, a path to an exported "
        "policy directory, or 'models:/NAME@ALIAS'"
    )


def _load_dir(path: Path) -> Policy:
    from chuck.policies.artifact import load_artifact

    return load_artifact(path)
