"""chuck: watch a PyTorch training run and let a (learned) policy steer it.

    import chuck
    opt = chuck.ChuckOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-3),
                               policy=chuck.load_policy("heuristic"), model=model)
    loss.backward(); opt.step(loss=loss); opt.zero_grad()

This import needs torch, numpy and gymnasium only; stable-baselines3, MLflow,
Optuna and polars are imported lazily by the modules that use them.
"""

from chuck.actions import ActionSpec, Knob
from chuck.guardrails import GuardrailConfig
from chuck.loading import PolicyLoadError, load_policy
from chuck.monitors import Indicator
from chuck.observation import ObservationSpec
from chuck.optimizer import ChuckOptimizer
from chuck.policies.base import Policy
from chuck.report import Decision, HealthReport

_LAZY = {
    "MLflowDecisionLogger": ("chuck.mlflow_logger", "MLflowDecisionLogger"),
    "tune": ("chuck.tuning", "tune"),
    "suggest_hyperparameters": ("chuck.history", "suggest_hyperparameters"),
    "read_history": ("chuck.history", "read_history"),
}


def __getattr__(name: str):
    # Edge modules load lazily so that `import chuck` needs only torch, numpy and gymnasium.
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'chuck' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
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
