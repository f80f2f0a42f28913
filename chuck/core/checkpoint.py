"""Validation of chuck's checkpoint entry: all of it is checked before any of it is loaded.

A checkpoint that would turn the weights NaN (``lr_mult = NaN``), raise at the next
decision (``clip = -1``), half-load (a dropout-count mismatch found after the base
optimizer's state was already in) or crash later inside a monitor (another model's
shapes) is refused up front with every problem named (faults issue, item 7).
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

import torch

from chuck.core.report import Decision

#: Format version of chuck's entry in ``state_dict()``. v2: monitors keyed by name with the
#: controller state as the ``ctrl`` monitor; the weight monitor keeps its previous update.
STATE_VERSION = 2

_REQUIRED = (
    "step",
    "calls",
    "interval",
    "action",
    "guardrails",
    "monitors",
    "rng",
    "policy_id",
    "policy_state",
    "decisions",
    "metrics",
    "last_scale",
)
_DECISION_FIELDS = {f.name for f in fields(Decision)}


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed by this optimizer; nothing of it was loaded."""


def upgrade(cs: dict[str, Any]) -> dict[str, Any]:
    """Bring a v1 entry to v2: the skip counter moved into the ``ctrl`` monitor."""
    if cs.get("version") != 1:
        return cs
    cs = dict(cs)
    monitors = {k: v for k, v in dict(cs.get("monitors") or {}).items() if v is not None}
    monitors["ctrl"] = {"step": cs.get("step", 0), "skips_since_decision": cs.pop("skips_since_decision", 0), "amp_overflows": 0}
    g = cs.get("guardrails")
    if g is not None:
        g = dict(g)
        g["spikes_in_a_row"] = g.pop("rollbacks_in_a_row", 0)
        cs["guardrails"] = g
    cs["monitors"], cs["version"] = monitors, STATE_VERSION
    return cs


def validate_chuck_state(cs: dict[str, Any], opt: Any, base_state: dict[str, Any]) -> dict[str, Any]:
    """Check chuck's entry (and the base optimizer's state shapes) against ``opt``.

    Returns the (upgraded) entry. Raises :class:`CheckpointError` naming every problem.
    """
    if not isinstance(cs, dict):
        raise CheckpointError(f"the 'chuck' entry must be a dict, got {type(cs).__name__}")
    cs = upgrade(cs)
    if cs.get("version") != STATE_VERSION:
        raise CheckpointError(f"chuck state version {cs.get('version')!r} is not supported (expected {STATE_VERSION})")
    missing = [k for k in _REQUIRED if k not in cs]
    if missing:
        raise CheckpointError(f"the 'chuck' entry lacks {missing}")
    problems: list[str] = []
    for key in ("step", "calls"):
        if not isinstance(cs[key], int) or cs[key] < 0:
            problems.append(f"{key} must be a non-negative integer, got {cs[key]!r}")
    if cs["interval"] != opt.interval:
        problems.append(
            f"the checkpoint decides every {cs['interval']} steps, this optimizer every {opt.interval}: "
            f"pass interval={cs['interval']}"
        )
    why = opt.action_spec.validate_state_dict(cs["action"]) if isinstance(cs["action"], dict) else "not a dict"
    if why:
        problems.append(f"action: {why}")
    params = opt._ctx.params
    if opt.guardrails is not None and cs["guardrails"] is not None:
        why = opt.guardrails.validate_state_dict(cs["guardrails"], params)
        if why:
            problems.append(why)
    if isinstance(cs["monitors"], dict):
        problems += opt.monitors.validate_state_dict(cs["monitors"])
    else:
        problems.append("monitors must be a dict keyed by monitor name")
    if not isinstance(cs["rng"], torch.Tensor) or cs["rng"].dtype != torch.uint8:
        problems.append("rng must be a uint8 generator state")
    else:
        try:
            torch.Generator().set_state(cs["rng"])
        except RuntimeError as exc:
            problems.append(f"rng: {exc}")
    if not isinstance(cs["decisions"], list) or any(
        not isinstance(d, dict) or set(d) - _DECISION_FIELDS for d in cs["decisions"]
    ):
        problems.append("decisions must be a list of decision records")
    if cs.get("val_vote", 0) not in (0, 1, 2) or isinstance(cs.get("val_vote", 0), bool):
        problems.append(f"val_vote must be 0, 1 or 2, got {cs.get('val_vote')!r}")
    if not isinstance(cs["metrics"], dict):
        problems.append("metrics must be a dict")
    last_scale = cs["last_scale"]
    if last_scale is not None and not (isinstance(last_scale, (int, float)) and math.isfinite(last_scale) and last_scale > 0):
        problems.append(f"last_scale must be None or a positive number, got {last_scale!r}")
    problems += _base_state_problems(opt.optimizer, base_state)
    if problems:
        raise CheckpointError("cannot resume from this checkpoint (nothing was loaded):\n  - " + "\n  - ".join(problems))
    return cs


def _base_state_problems(optimizer: torch.optim.Optimizer, sd: dict[str, Any]) -> list[str]:
    """Group sizes and per-parameter state shapes against the optimizer's parameters.

    torch checks group sizes but not shapes: another model's Adam moments load and crash at
    the next step (or, worse, broadcast).
    """
    groups = sd.get("param_groups")
    if not isinstance(groups, list):
        return ["the base optimizer state has no param_groups"]
    if len(groups) != len(optimizer.param_groups):
        return [f"the checkpoint has {len(groups)} parameter groups, the optimizer {len(optimizer.param_groups)}"]
    problems = []
    state = sd.get("state", {})
    for i, (saved, group) in enumerate(zip(groups, optimizer.param_groups)):
        ids, params = saved.get("params", []), group["params"]
        if len(ids) != len(params):
            problems.append(f"group {i} holds {len(ids)} parameters in the checkpoint, {len(params)} in the optimizer")
            continue
        for pid, p in zip(ids, params):
            for key, value in state.get(pid, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() > 0 and not value.is_sparse and value.shape != p.shape:
                    problems.append(
                        f"state {key!r} of a parameter has shape {tuple(value.shape)}, the parameter "
                        f"{tuple(p.shape)}: a checkpoint of another model?"
                    )
                    break
    return problems
