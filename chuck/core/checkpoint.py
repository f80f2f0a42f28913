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

import warnings
from dataclasses import MISSING, fields
from typing import Any

import torch

from chuck.core import statecheck as check
from chuck.core.guardrails import ValidationVote
from chuck.core.report import SOURCES, Decision, DecisionLog

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


def chuck_state(opt: Any, decisions: int) -> dict[str, Any]:
    """chuck's entry of ``opt.state_dict()``, with the last ``decisions`` decision records."""
    cs = {
        "version": STATE_VERSION,
        "step": opt._step,
        "calls": opt._calls,
        "interval": opt.interval,
        "action": opt.action_spec.state_dict(),
        "guardrails": opt.guardrails.state_dict() if opt.guardrails is not None else None,
        "monitors": opt.monitors.state_dict(),
        "rng": opt._generator.get_state(),
        "policy_id": opt.policy_id,
        "policy_state": opt.policy.state_dict() if opt.policy is not None else {},
        # the most recent decisions only: a checkpoint stays small however long the run (the full
        # trail goes to the tracking logger and the history record)
        "decisions": [d.as_dict() for d in opt.decisions[max(0, len(opt.decisions) - decisions) :]],
        "val_vote": int(opt._val_vote),
        "metrics": dict(opt.metrics),
        "last_scale": opt._last_scale,
    }
    if opt.safe_start is not None:  # only when on: a run without it checkpoints as before
        cs["safe_start"] = opt.safe_start.state_dict()
    return cs


def load_checkpoint(opt: Any, state_dict: dict[str, Any]) -> None:
    """Validate ``state_dict`` (the base optimizer's, with chuck's entry under ``"chuck"``) against ``opt``,
    then load it: all of it, or (should loading raise all the same) nothing, the previous state put back.

    Raises:
        CheckpointError: naming what is wrong.
    """
    state_dict = dict(state_dict)
    entry = state_dict.pop("chuck", None)
    if entry is not None:
        entry = validate_chuck_state(entry, opt, state_dict)
        if opt.safe_start is not None and entry.get("safe_start") is not None:
            why = opt.safe_start.validate_state_dict(entry["safe_start"], opt._ctx.params)
            if why:
                raise CheckpointError(f"cannot resume from this checkpoint (nothing was loaded):\n  - safe_start: {why}")
    # what a failed load puts back: torch's load_state_dict gives the base optimizer new state and
    # group objects (it never changes the old ones in place), so its attributes as they are now are
    # its state; chuck's own is copied out, decisions and metrics kept as the objects they are
    base_before = dict(opt.optimizer.__dict__)
    chuck_before = chuck_state(opt, 0), opt.controller.decisions, opt.metrics
    loading = ["the base optimizer's state"]  # what was being loaded, for the error
    start_before = opt.guardrails.start if opt.guardrails is not None else None
    if opt.guardrails is not None and start_before is not None:
        opt.guardrails.start = start_before.fresh()  # a load ends the start guard; a failed one must not
    try:
        opt.optimizer.load_state_dict(state_dict)
        if entry is not None:
            load_chuck_state(opt, entry, loading)
    except Exception as exc:
        try:
            opt.optimizer.__dict__.clear()
            opt.optimizer.__dict__.update(base_before)
            load_chuck_state(opt, chuck_before[0], [])
            opt.controller.decisions, opt.metrics = chuck_before[1], chuck_before[2]
            if opt.guardrails is not None and start_before is not None:
                opt.guardrails.start = start_before
        except Exception as again:
            raise CheckpointError(
                f"loading {loading[-1]} raised {type(exc).__name__}: {exc}; putting the previous state back "
                f"raised {type(again).__name__}: {again}, so the optimizer's state is undefined: build it again"
            ) from exc
        raise CheckpointError(
            f"cannot resume from this checkpoint (nothing was loaded): loading {loading[-1]} raised {type(exc).__name__}: {exc}"
        ) from exc
    if entry is None:
        warnings.warn(
            "state_dict has no 'chuck' entry (a bare optimizer checkpoint?): chuck starts fresh", RuntimeWarning, stacklevel=4
        )


def load_chuck_state(opt: Any, cs: dict[str, Any], loading: list[str]) -> None:
    """Load a validated entry; ``loading`` gets the name of each part as it is loaded."""
    loading.append("chuck.policy_id")
    if cs["policy_id"] != opt.policy_id:
        warnings.warn(
            f"checkpoint was written under policy {cs['policy_id']}, resuming under {opt.policy_id}",
            RuntimeWarning,
            stacklevel=5,  # the caller of opt.load_state_dict
        )
    opt._step, opt._calls = int(cs["step"]), int(cs["calls"])
    loading.append("chuck.action")
    opt.action_spec.load_state_dict(cs["action"])
    opt.action_spec.start_warmup(opt.action_spec.warmup_steps, opt._step)
    ss = opt.safe_start
    if ss is not None and cs.get("safe_start") is not None:
        loading.append("chuck.safe_start")
        ss.load_state_dict(cs["safe_start"], opt._ctx.params)
        # the warm-up as the run had it: over, when the ramp stopped at a blow-up
        opt.action_spec.start_warmup(0 if ss.stopped_at >= 0 else ss.warmup, opt._step)
    if opt.guardrails is not None and cs["guardrails"] is not None:
        loading.append("chuck.guardrails")
        opt.guardrails.load_state_dict(cs["guardrails"], opt._ctx.params)
    opt._val_vote = ValidationVote(int(cs.get("val_vote", 0)))
    loading.append("chuck.monitors")
    opt.monitors.load_state_dict(cs["monitors"])
    loading.append("chuck.rng")
    opt._generator.set_state(cs["rng"])
    if opt.policy is not None and cs["policy_state"]:
        loading.append("chuck.policy_state")
        opt.policy.load_state_dict(cs["policy_state"])
    loading.append("chuck.decisions")
    opt.controller.decisions = DecisionLog((Decision.from_dict(d) for d in cs["decisions"]), maxlen=opt.decisions.maxlen)
    opt.metrics = dict(cs["metrics"])
    opt._last_scale = cs["last_scale"]
    act = opt.act_monitor
    if act is not None:
        act.disarm()
    opt._arm_if_due()
