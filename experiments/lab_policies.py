"""Lab policies under chuck's names: the step-size prior's rejected versions as ``prior@N``.

Importing this module registers them with :func:`chuck.policies.register_policy`, so every command that
imports task modules can name them; from the repository root::

    chuck evaluate --policies prior@4,prior@10 --tasks validation --tasks-module experiments.lab_policies --out DIR

(``--tasks-module`` imports the module in the command's process and names it to the processes it starts.)
A residual on one of them (``chuck train-policy --prior prior@16``, a derived artifact's card) loads
wherever this module is imported. Derived artifacts with features chuck does not ship (ensembles,
progress gates, cooldown caps, plateau holds) get a name with :func:`register_artifact`, or, for the
commands, from the environment at import::

    CHUCK_LAB_ARTIFACTS=hold22=experiments/runs/derived/default-hold22 chuck evaluate --policies default,hold22 \
        --tasks validation --tasks-module experiments.lab_policies --out DIR
"""

from __future__ import annotations

import os
from pathlib import Path

from chuck.policies import Policy, register_policy, unregister_policy
from experiments.prior_variants import LAB_VERSIONS, PriorVariant
from experiments.residual_variants import load_variant


def _prior(version: str) -> PriorVariant:
    return PriorVariant(version=version)


def lab_prior_names() -> list[str]:
    """The names :func:`register` gives: ``prior@N`` for every version chuck does not ship."""
    return [f"prior@{v}" for v in LAB_VERSIONS]


def register() -> None:
    """Register every lab version of the prior as ``prior@N`` (again: replaces them)."""
    for version in LAB_VERSIONS:
        register_policy(f"prior@{version}", lambda v=version: _prior(v), replace=True)


def unregister() -> None:
    """Forget the names :func:`register` gave."""
    for name in lab_prior_names():
        unregister_policy(name)


def register_artifact(name: str, path: str | Path) -> None:
    """Name a derived artifact (:func:`experiments.residual_variants.load_variant` loads it) for the commands."""
    where = Path(path).expanduser().resolve()

    def load() -> Policy:
        return load_variant(where)

    register_policy(name, load, replace=True)


#: The environment variable naming derived artifacts at import: ``name=path[,name=path...]``.
ARTIFACTS_ENV = "CHUCK_LAB_ARTIFACTS"


def register_from_env() -> list[str]:
    """Name the derived artifacts that :data:`ARTIFACTS_ENV` lists; returns the names.

    Raises:
        ValueError: an entry that is not ``name=path``, or a name of a lab prior.
    """
    names = []
    for entry in filter(None, (e.strip() for e in os.environ.get(ARTIFACTS_ENV, "").split(","))):
        name, sep, path = (part.strip() for part in entry.partition("="))
        if not (sep and name and path):
            raise ValueError(f"{ARTIFACTS_ENV}: {entry!r} is not name=path")
        if name in lab_prior_names():
            raise ValueError(f"{ARTIFACTS_ENV}: {name!r} names a lab prior; give the artifact another name")
        register_artifact(name, path)
        names.append(name)
    return names


register()
register_from_env()
