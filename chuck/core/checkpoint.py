"""Validation of chuck's checkpoint entry: all of it is checked before any of it is loaded.

A checkpoint is untrusted input. Every field of chuck's entry is checked for its type, finiteness,
sign and (tensors) shape against the live parameters, by this module and by each component's
``validate_state_dict`` (the action spec, the guardrails, every monitor, the policy), with the checks
of :mod:`chuck.core.statecheck`. A checkpoint that would turn the weights NaN (``lr_mult = NaN``),
raise at the next decision (``clip = -1``), half-load (a dropout-count mismatch found after the base
optimizer's state was already in) or crash later inside a monitor (another model's shapes, a string
where a count belongs) is refused up front with every problem named. ``ChuckOptimizer.load_state_dict``
adds the last line of defence: should loading raise all the same, what was there is put back.
"""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any

import torch

from chuck.core import statecheck as check
from chuck.core.report import SOURCES, Decision

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
_DECISION_REQUIRED = {f.name for f in fields(Decision) if f.default is MISSING and f.default_factory is MISSING}


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed by this optimizer; nothing of it was loaded."""


def upgrade(cs: dict[str, Any]) -> dict[str, Any]:
    """Bring a v1 entry to v2: the skip counter moved into the ``ctrl`` monitor."""
    if not (type(cs.get("version")) is int and cs["version"] == 1):
        return cs
    cs = dict(cs)
    monitors = cs.get("monitors")
    monitors = {k: v for k, v in monitors.items() if v is not None} if isinstance(monitors, dict) else {}
    monitors["ctrl"] = {"step": cs.get("step", 0), "skips_since_decision": cs.pop("skips_since_decision", 0), "amp_overflows": 0}
    g = cs.get("guardrails")
    if isinstance(g, dict):
        g = dict(g)
        g["spikes_in_a_row"] = g.pop("rollbacks_in_a_row", 0)
        cs["guardrails"] = g
    cs["monitors"], cs["version"] = monitors, STATE_VERSION
    return cs


def validate_chuck_state(cs: dict[str, Any], opt: Any, base_state: dict[str, Any]) -> dict[str, Any]:
    """Check chuck's entry (and the base optimizer's state shapes) against ``opt``: every field, its
    type, finiteness, sign and (for tensors) shape against the live parameters.

    Returns the (upgraded) entry. Raises :class:`CheckpointError` naming every problem.
    """
    if not isinstance(cs, dict):
        raise CheckpointError(f"the 'chuck' entry must be a dict, got {type(cs).__name__}")
    cs = upgrade(cs)
    if not (type(cs.get("version")) is int and cs["version"] == STATE_VERSION):
        raise CheckpointError(f"chuck state version {check.show(cs.get('version'))} is not supported (expected {STATE_VERSION})")
    missing = [k for k in _REQUIRED if k not in cs]
    if missing:
        raise CheckpointError(f"the 'chuck' entry lacks {missing}")
    problems: list[str] = []

    def ask(field: str, why: Any) -> None:
        """Record ``field``'s problem; ``why`` is a check to call (a component's validation)."""
        try:
            found = why() if callable(why) else why
        except Exception as exc:  # noqa: BLE001 - a check that raises refuses the entry, it does not crash the load
            found = f"its check raised {type(exc).__name__}: {exc}"
        if isinstance(found, list):
            problems.extend(found)
        elif found:
            problems.append(f"{field}: {found}" if field else found)

    ask("", check.count("step", cs["step"]))
    ask("", check.count("calls", cs["calls"]))
    if not (type(cs["interval"]) is int and cs["interval"] == opt.interval):
        ask(
            "",
            f"the checkpoint decides every {check.show(cs['interval'])} steps, this optimizer every {opt.interval}: "
            f"pass interval={check.show(cs['interval'])}",
        )
    ask("action", lambda: opt.action_spec.validate_state_dict(cs["action"]))
    base_problems = _base_state_problems(opt.optimizer, base_state)
    if opt.guardrails is not None and cs["guardrails"] is not None:
        # the snapshots' optimizer state must look like the base optimizer's state it will be put back into
        reference = None if base_problems else _state_by_position(opt.optimizer, base_state)
        ask("", lambda: opt.guardrails.validate_state_dict(cs["guardrails"], opt._ctx.params, reference))
    if isinstance(cs["monitors"], dict):
        ask("", lambda: opt.monitors.validate_state_dict(cs["monitors"]))
    else:
        ask("", "monitors must be a dict keyed by monitor name")
    if not isinstance(cs["rng"], torch.Tensor) or cs["rng"].dtype != torch.uint8:
        ask("", "rng must be a uint8 generator state")
    else:
        ask("rng", lambda: torch.Generator().set_state(cs["rng"]) and None)
    ask("", check.text("policy_id", cs["policy_id"]))
    if not isinstance(cs["policy_state"], dict):
        ask("", f"policy_state must be a dict, got {check.show(cs['policy_state'])}")
    elif opt.policy is not None and cs["policy_state"]:
        ask("policy_state", lambda: opt.policy.validate_state_dict(cs["policy_state"]))
    ask("", _decisions_problem(cs["decisions"]))
    val_vote = cs.get("val_vote", 0)
    if not (type(val_vote) is int and val_vote in (0, 1, 2)):
        ask("", f"val_vote must be 0, 1 or 2, got {check.show(val_vote)}")
    # observe() records a non-finite validation loss too: any real number
    ask("", check.mapping("metrics", cs["metrics"], lambda name, v: None if check.is_real(v) else f"{name} must be a number"))
    if cs["last_scale"] is not None and not (check.is_real(cs["last_scale"]) and cs["last_scale"] > 0):
        ask("", f"last_scale must be None or a positive number, got {check.show(cs['last_scale'])}")
    problems += base_problems
    if problems:
        raise CheckpointError("cannot resume from this checkpoint (nothing was loaded):\n  - " + "\n  - ".join(problems))
    return cs


def _decisions_problem(decisions: Any) -> str | None:
    """Why the decision records cannot become :class:`Decision` objects that every reader (the report,
    the history record, the tracking logger) can use."""
    if not isinstance(decisions, list):
        return f"decisions must be a list of decision records, got {check.show(decisions)}"
    for i, d in enumerate(decisions):
        name = f"decisions[{i}]"
        if not isinstance(d, dict) or set(d) - _DECISION_FIELDS or _DECISION_REQUIRED - set(d):
            return f"{name} must be a decision record with the fields {sorted(_DECISION_FIELDS)}"
        why = check.first(
            check.count(f"{name}.step", d["step"]),
            None if d["source"] in SOURCES else f"{name}.source must be one of {SOURCES}, got {check.show(d['source'])}",
            check.numbers_list(f"{name}.action", d["action"]),
            check.stats(f"{name}.observation", d["observation"]),
            check.mapping(f"{name}.hyperparameters", d["hyperparameters"], check.number, nan=True, inf=True),
            check.text(f"{name}.reason", d.get("reason", "")),
            check.mapping(f"{name}.attribution", d.get("attribution", {}), check.stats),
            check.text(f"{name}.policy_id", d.get("policy_id", "")),
            check.optional(check.mapping, f"{name}.changed", d.get("changed"), check=_before_after),  # None: before it existed
        )
        if why:
            return why
    return None


def _before_after(name: str, pair: Any) -> str | None:
    """A hyperparameter's ``(before, after)`` in a decision record (``inf``: clipping off)."""
    if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
        return f"{name} must be a (before, after) pair, got {check.show(pair)}"
    return check.numbers_list(name, pair, nan=True, inf=True)


def _state_by_position(optimizer: torch.optim.Optimizer, sd: dict[str, Any]) -> list[dict[str, Any] | None]:
    """The checkpoint's base-optimizer state of each trainable parameter, in the order of chuck's
    parameter list (every group's parameters that require a gradient); ``None`` where it holds none."""
    state = sd.get("state", {})
    out: list[dict[str, Any] | None] = []
    for saved, group in zip(sd["param_groups"], optimizer.param_groups):
        for pid, p in zip(saved.get("params", []), group["params"]):
            if p.requires_grad:
                entry = state.get(pid) if isinstance(state, dict) else None
                out.append(entry if isinstance(entry, dict) else None)
    return out


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
