"""chuck: watch a PyTorch training run and let a (learned) policy steer it.

    import chuck
    opt = chuck.ChuckOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-3),
                               policy=chuck.load_policy("heuristic"), model=model)
    loss.backward(); opt.step(loss=loss); opt.zero_grad()

Every public name loads on first use (PEP 562): ``import chuck`` itself imports
nothing heavy, so the ``chuck`` command answers ``--help`` without loading torch.
Using the core (``ChuckOptimizer``, ``load_policy``) needs torch, numpy
and gymnasium only; stable-baselines3, MLflow, Optuna and polars are imported by
the modules that use them.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ below loads them
    from chuck.core.actions import EFFECTIVE_LR_KEY, ActionSpec, Knob
    from chuck.core.guardrails import GuardrailConfig
    from chuck.core.loading import PolicyLoadError, load_policy
    from chuck.core.observation import ObservationSpec
    from chuck.core.optimizer import ChuckOptimizer
    from chuck.core.report import Decision, HealthReport
    from chuck.core.safe_start import SafeStartConfig
    from chuck.history import read_history, suggest_hyperparameters
    from chuck.monitors import Indicator
    from chuck.policies.base import Policy
    from chuck.tracking.logger import MLflowDecisionLogger
    from chuck.tuning.cold_start import tune

_LAZY = {
    "ActionSpec": "chuck.core.actions",
    "EFFECTIVE_LR_KEY": "chuck.core.actions",
    "Knob": "chuck.core.actions",
    "GuardrailConfig": "chuck.core.guardrails",
    "SafeStartConfig": "chuck.core.safe_start",
    "PolicyLoadError": "chuck.core.loading",
    "load_policy": "chuck.core.loading",
    "Indicator": "chuck.monitors",
    "ObservationSpec": "chuck.core.observation",
    "ChuckOptimizer": "chuck.core.optimizer",
    "Policy": "chuck.policies.base",
    "Decision": "chuck.core.report",
    "HealthReport": "chuck.core.report",
    "MLflowDecisionLogger": "chuck.tracking.logger",
    "tune": "chuck.tuning.cold_start",
    "suggest_hyperparameters": "chuck.history",
    "read_history": "chuck.history",
}


#: Modules that moved when ``chuck/`` was grouped into subpackages: the old import paths keep working
#: (``import chuck.optimizer`` gives ``chuck.core.optimizer`` itself, not a copy).
_MOVED = {
    "chuck.actions": "chuck.core.actions",
    "chuck.checkpoint": "chuck.core.checkpoint",
    "chuck.controller": "chuck.core.controller",
    "chuck.demo": "chuck.cli.demo",
    "chuck.distributed": "chuck.core.distributed",
    "chuck.evaluate": "chuck.evaluation",
    "chuck.explain": "chuck.core.explain",
    "chuck.guardrails": "chuck.core.guardrails",
    "chuck.home": "chuck.core.home",
    "chuck.loading": "chuck.core.loading",
    "chuck.metatrain_callbacks": "chuck.metatrain.callbacks",
    "chuck.mlflow_logger": "chuck.tracking.logger",
    "chuck.mlflow_spool": "chuck.tracking.spool",
    "chuck.observation": "chuck.core.observation",
    "chuck.optimizer": "chuck.core.optimizer",
    "chuck.ray_backend": "chuck.metatrain.ray_backend",
    "chuck.report": "chuck.core.report",
    "chuck.run_record": "chuck.core.run_record",
    "chuck.snapshot": "chuck.core.snapshot",
    "chuck.study": "chuck.tuning.study",
    "chuck.taxonomy": "chuck.core.taxonomy",
    "chuck.timeline": "chuck.tracking.timeline",
    "chuck.ui": "chuck.tracking.ui",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolve a moved module's old name to the module at its new place (one object, two names)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        return importlib.import_module(_MOVED[spec.name])

    def exec_module(self, module: Any) -> None:
        pass  # already executed under its new name


if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())


def __getattr__(name: str) -> Any:
    """Load a public name (or a subpackage such as ``chuck.zoo``) on first access, then cache it."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    else:
        try:  # `import chuck; chuck.zoo.get_task(...)` keeps working without an explicit submodule import
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module 'chuck' has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__version__ = "0.1.0"

__all__ = [
    "EFFECTIVE_LR_KEY",
    "ActionSpec",
    "ChuckOptimizer",
    "Decision",
    "GuardrailConfig",
    "HealthReport",
    "Indicator",
    "Knob",
    "MLflowDecisionLogger",
    "ObservationSpec",
    "Policy",
    "PolicyLoadError",
    "SafeStartConfig",
    "__version__",
    "load_policy",
    "read_history",
    "suggest_hyperparameters",
    "tune",
]
