"""chuck: watch a PyTorch training run and let a (learned) policy steer it.

    import chuck
    opt = chuck.ChuckOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-3),
                               policy=chuck.load_policy("heuristic"), model=model)
    loss.backward(); opt.step(loss=loss); opt.zero_grad()

Every public name loads on first use (PEP 562): ``import chuck`` itself imports
nothing heavy, so the ``chuck`` command answers ``--help`` without loading torch
(issue 15). Using the core (``ChuckOptimizer``, ``load_policy``) needs torch, numpy
and gymnasium only; stable-baselines3, MLflow, Optuna and polars are imported by
the modules that use them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ below loads them
    from chuck.actions import EFFECTIVE_LR_KEY, ActionSpec, Knob
    from chuck.guardrails import GuardrailConfig
    from chuck.history import read_history, suggest_hyperparameters
    from chuck.loading import PolicyLoadError, load_policy
    from chuck.mlflow_logger import MLflowDecisionLogger
    from chuck.monitors import Indicator
    from chuck.observation import ObservationSpec
    from chuck.optimizer import ChuckOptimizer
    from chuck.policies.base import Policy
    from chuck.report import Decision, HealthReport
    from chuck.tuning import tune

_LAZY = {
    "ActionSpec": "chuck.actions",
    "EFFECTIVE_LR_KEY": "chuck.actions",
    "Knob": "chuck.actions",
    "GuardrailConfig": "chuck.guardrails",
    "PolicyLoadError": "chuck.loading",
    "load_policy": "chuck.loading",
    "Indicator": "chuck.monitors",
    "ObservationSpec": "chuck.observation",
    "ChuckOptimizer": "chuck.optimizer",
    "Policy": "chuck.policies.base",
    "Decision": "chuck.report",
    "HealthReport": "chuck.report",
    "MLflowDecisionLogger": "chuck.mlflow_logger",
    "tune": "chuck.tuning",
    "suggest_hyperparameters": "chuck.history",
    "read_history": "chuck.history",
}


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
    "__version__",
    "load_policy",
    "read_history",
    "suggest_hyperparameters",
    "tune",
]
