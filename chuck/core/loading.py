"""``load_policy``: one entry point for every way a policy is named.

* ``"constant"``, ``"heuristic"``: built-in rule policies.
* ``"default"``: the learned PPO policy shipped as package data (chuck/policies/artifacts/default).
* a path to an exported policy directory (``policy.json`` + ``policy.pt``).
* ``"models:/NAME@ALIAS"`` or ``"models:/NAME/VERSION"``: a policy registered in MLflow
  (needs mlflow; downloaded to a temporary folder, loaded like a path, folder removed),
  from the store :func:`chuck.tracking.store.resolve_tracking_uri` names: ``MLFLOW_TRACKING_URI``
  or else ``$CHUCK_HOME/mlflow.db``, where ``chuck train-policy`` registers.

Loading never runs pickle: weights go through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
from pathlib import Path

from chuck.policies.base import Policy

BUILTIN = ("constant", "heuristic", "prior", "prior@VERSION")


def is_builtin(name: str) -> bool:
    """True for a policy name chuck resolves itself (not a path): the built-ins, ``prior@N``, ``default``."""
    if name in BUILTIN or name == "default":
        return True
    base, _, version = name.partition("@")
    return base == "prior" and version.isdigit()


class PolicyLoadError(ValueError):
    """A policy artifact is missing, corrupt, truncated or does not match this chuck."""


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
            from chuck.policies.prior import VERSIONS, StepSizePrior

            version = name_or_path.partition("@")[2] or None
            if version is not None and version not in VERSIONS:
                raise PolicyLoadError(f"unknown prior version {version!r}: use one of {sorted(VERSIONS, key=int)}")
            return StepSizePrior() if version is None else StepSizePrior(version=version)
        if name_or_path == "default":
            from chuck.policies.artifact import bundled_artifact_dir

            return _load_dir(bundled_artifact_dir("default"))
        if name_or_path.startswith("models:/"):
            from chuck.policies.registry import load_registered_policy

            return load_registered_policy(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.exists():
        return _load_dir(path)
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
