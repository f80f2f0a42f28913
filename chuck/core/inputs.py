"""What the optimizer is given, checked at the door: the policy, step counts, reported numbers, the
base optimizer's needs, and the step's loss and gradient norm read as floats (one host sync)."""

from __future__ import annotations

import inspect
import math
import numbers
from typing import Any

import numpy as np
import torch

from chuck.core.actions import ACTION_VERSIONS, ActionSpec
from chuck.core.observation import FEATURE_SETS
from chuck.monitors.gradients import dense_values
from chuck.monitors.loss import require_scalar_loss


def resolve_policy(policy: Any) -> Any:
    from chuck.policies.base import Policy

    if policy is None or isinstance(policy, Policy):
        return policy
    if isinstance(policy, str):
        from chuck.core.loading import load_policy

        return load_policy(policy)
    raise TypeError(f"policy must be a chuck Policy, a name/path/URI string, or None; got {type(policy).__name__}")


def whole_number(name: str, value: Any, minimum: int) -> int | None:
    """A step count given to the constructor: ``None``, or a whole number >= ``minimum``.

    ``1.5`` or ``"10"`` would otherwise be taken as some other count without a word (``int("10")``,
    a budget of 1.5 steps), and ``True`` as 1; a whole float (``100.0``, from arithmetic) is fine.
    """
    if value is None:
        return None
    whole = isinstance(value, (int, np.integer)) or (isinstance(value, (float, np.floating)) and float(value).is_integer())
    if isinstance(value, bool) or not whole:
        raise TypeError(f"{name} must be a whole number of steps, got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def reported_number(name: str, value: Any) -> float:
    """One number reported to :meth:`ChuckOptimizer.observe`: a real Python or numpy number, or a
    one-element real tensor or array. ``float()`` would also take ``"0.5"`` and ``True`` without a word, and
    a per-sample tensor with torch's message about "one element tensors"."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"{name} must be one number (e.g. the mean over the validation set), got a tensor of shape {tuple(value.shape)}"
            )
        if value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{name} must be a real number, got a {value.dtype} tensor")
        return float(value.detach())
    if isinstance(value, np.ndarray):
        if value.size != 1:
            raise ValueError(
                f"{name} must be one number (e.g. the mean over the validation set), got an array of shape {tuple(value.shape)}"
            )
        value = value.reshape(())[()]  # its one element, as a numpy scalar: checked below like any number
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    return float(value)


def check_spec_versions(policy: Any, action_spec: ActionSpec | None) -> None:
    if policy is None:
        return
    if policy.observation_version not in FEATURE_SETS:
        raise ValueError(
            f"policy {policy.id} was built for observation spec v{policy.observation_version}, "
            f"this chuck knows {sorted(FEATURE_SETS)}"
        )
    if policy.action_version not in ACTION_VERSIONS:
        raise ValueError(
            f"policy {policy.id} was built for action spec v{policy.action_version}, this chuck knows {sorted(ACTION_VERSIONS)}"
        )
    if action_spec is not None and policy.action_version != action_spec.version:
        raise ValueError(
            f"policy {policy.id} was built for action spec v{policy.action_version}, "
            f"the action_spec given is v{action_spec.version}"
        )


def needs_closure(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the base optimizer's ``step`` requires a closure (LBFGS evaluates the loss itself)."""
    try:
        param = inspect.signature(type(optimizer).step).parameters.get("closure")
    except (TypeError, ValueError):
        return False
    return param is not None and param.default is inspect.Parameter.empty


def as_float(x: Any) -> float:
    return float(x.item()) if isinstance(x, torch.Tensor) else float(x)


def read_scalars(loss: Any, grads: list[torch.Tensor], vote: int = 0) -> tuple[float | None, float, int]:
    """Loss, global grad norm and the validation vote (in one process: as cast) of a step.

    Loss and norm are read as floats with one host sync for both on accelerators; on CPU a
    "sync" is free, so the two values are read directly (fewer ops to dispatch). Sparse
    gradients count through their stored values.
    """
    require_scalar_loss(loss)  # before any fast path: each must refuse a per-sample loss
    if grads:
        norms = torch._foreach_norm([dense_values(g) for g in grads])
        dev = norms[0].device
        if dev.type == "cpu" and len(norms) <= 32:
            # a few CPU scalars: reading them beats two more dispatched ops (stack, norm) on small models
            gv = math.hypot(*map(float, norms))
            return (None if loss is None else float(loss.detach() if isinstance(loss, torch.Tensor) else loss)), gv, vote
        gnorm = torch.linalg.vector_norm(torch.stack(norms) if dev.type == "cpu" else torch.stack([n.to(dev) for n in norms]))
    else:
        gnorm, dev = torch.zeros(()), torch.device("cpu")
    if loss is None:
        return None, float(gnorm), vote
    if isinstance(loss, torch.Tensor):
        if dev.type == "cpu" and loss.device.type == "cpu":
            return float(loss.detach()), float(gnorm), vote
        lv, gv = torch.stack([loss.detach().reshape(()).float().to(dev), gnorm.float()]).tolist()
        return lv, gv, vote
    return float(loss), float(gnorm), vote
