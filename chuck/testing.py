"""Contract checkers for what users plug into chuck, as Gymnasium and stable-baselines3 ship ``check_env``.

    from chuck.testing import check_monitor, check_policy
    check_policy(MyPolicy())          # raises AssertionError naming the broken rule
    check_monitor(MyMonitor())        # attaches it to a small run first

chuck's own contract tests call these on every policy and monitor it ships, so a user's policy or
monitor that passes them meets the same contract as the built-ins.
"""

from __future__ import annotations

import copy
import io
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from chuck.core.actions import ACTION_VERSIONS, ActionSpec
from chuck.core.observation import ObservationSpec
from chuck.core.optimizer import ChuckOptimizer
from chuck.monitors import Monitor
from chuck.policies.base import Policy

__all__ = ["check_monitor", "check_policy"]

#: Monitor statuses an indicator may report.
STATUSES = ("ok", "warn", "bad", "n/a")


def _fail(what: str) -> None:
    raise AssertionError(what)


def _round_trip(state: Any) -> Any:
    """``state`` through ``torch.save`` / ``torch.load(weights_only=True)``: what a checkpoint does to it."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    try:
        return torch.load(buf, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - the message names what is not weights_only-safe
        raise AssertionError(f"state_dict() does not load with torch.load(weights_only=True): {exc}") from None


def check_policy(policy: Policy, *, samples: int = 100, seed: int = 0) -> None:
    """Check the :class:`chuck.Policy` contract (see ``chuck.policies.base``); raise ``AssertionError`` naming
    the first broken rule.

    * it is a ``Policy`` built for specs this chuck knows, and its ``id`` is ``name@version``;
    * ``act`` maps ``samples`` observations drawn from the observation space to finite actions in
      ``[-1, 1]`` of the action spec's size, and refuses an observation of another size with a
      ``ValueError`` that names both sizes;
    * ``state_dict()`` survives ``torch.load(weights_only=True)`` and loads back;
    * ``metadata()`` names the policy and its observation version.
    """
    if not isinstance(policy, Policy):
        _fail(f"a policy must subclass chuck.Policy, got {type(policy).__name__}")
    if policy.action_version not in ACTION_VERSIONS:
        _fail(f"{policy.name}: action spec v{policy.action_version} is unknown (known: {sorted(ACTION_VERSIONS)})")
    try:
        spec = ObservationSpec(policy.observation_version)
    except ValueError as exc:
        raise AssertionError(f"{policy.name}: {exc}") from None
    if policy.id != f"{policy.name}@{policy.version}":
        _fail(f"{policy.name}: id must be 'name@version', got {policy.id!r}")
    dims = len(ActionSpec.dims)
    space = spec.space
    space.seed(seed)
    for _ in range(samples):
        action = np.asarray(policy.act(space.sample()), dtype=np.float64)
        if action.shape != (dims,):
            _fail(f"{policy.name}: act() returned shape {action.shape}, the action spec has {dims} entries")
        if not (np.all(np.isfinite(action)) and np.all(np.abs(action) <= 1.0)):
            _fail(f"{policy.name}: act() returned {action.tolist()}, outside [-1, 1] or not finite")
    want = len(spec.names)
    for size in (3, want + 1):
        try:
            policy.act(np.zeros(size, dtype=np.float32))
        except ValueError as exc:
            if str(size) not in str(exc) or str(want) not in str(exc):
                _fail(f"{policy.name}: the error for a {size}-entry observation must name both sizes, got {exc}")
        else:
            _fail(f"{policy.name}: act() took a {size}-entry observation; spec v{spec.version} has {want} entries")
    policy.load_state_dict(_round_trip(policy.state_dict()))
    meta = policy.metadata()
    if meta.get("name") != policy.name or meta.get("observation_version") != spec.version:
        _fail(f"{policy.name}: metadata() must name the policy and its observation version, got {meta}")


def _small_run(monitor: Monitor, steps: int) -> ChuckOptimizer:
    """A 16-unit MLP with dropout on a fixed classification problem, ``steps`` steps under the heuristic
    policy with an evaluation every 10, ``monitor`` attached."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Linear(16, 3))
    opt = ChuckOptimizer(
        torch.optim.AdamW(model.parameters(), lr=1e-2), "heuristic", model=model, monitors=[monitor], history=False
    )
    opt.advise = False
    for step in range(steps):
        x, y = torch.randn(32, 8, generator=gen), torch.randint(0, 3, (32,), generator=gen)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step(loss=loss)
        opt.zero_grad()
        if (step + 1) % 10 == 0:
            opt.observe(val_loss=float(loss.detach()) * 1.1)
    return opt


def check_monitor(monitor: Monitor, *, fresh: Monitor | None = None, steps: int = 45) -> None:
    """Check the :class:`chuck.monitors.Monitor` contract; raise ``AssertionError`` naming the first broken rule.

    ``monitor`` is attached to a small run of ``steps`` steps first unless it already watches one (a monitor
    of a live optimizer, e.g. ``opt.monitors["loss"]``). ``fresh``: an unused instance of the same monitor,
    to load the checked one's state into (default: a copy of ``monitor`` taken before the run).

    * ``stats()`` is repeatable, non-empty, keyed ``"<name>.<stat>"``, every value a float (finite or NaN);
    * every indicator is named ``"<name>.<...>"``, has a known status, a reason and a source;
    * ``state_dict()`` survives ``torch.load(weights_only=True)``; ``fresh.validate_state_dict`` accepts it
      and, once loaded, ``fresh.stats()`` equals ``monitor.stats()``.
    """
    if not isinstance(monitor, Monitor):
        _fail(f"a monitor must subclass chuck.monitors.Monitor, got {type(monitor).__name__}")
    if getattr(monitor, "ctx", None) is None:
        fresh = fresh if fresh is not None else copy.deepcopy(monitor)
        _small_run(monitor, steps)
    if fresh is None:
        _fail(f"{monitor.name}: a monitor of a live run needs fresh=, an unused instance to load its state into")
    assert fresh is not None
    s1, s2 = monitor.stats(), monitor.stats()
    if not s1 or s1.keys() != s2.keys():
        _fail(f"{monitor.name}: stats() must be non-empty and give the same keys every time")
    for key, value in s1.items():
        if not key.startswith(monitor.name + "."):
            _fail(f"{monitor.name}: statistic {key!r} must start with '{monitor.name}.'")
        if not isinstance(value, float) or math.isinf(value):
            _fail(f"{monitor.name}: statistic {key} = {value!r} must be a float, finite or NaN")
    for ind in monitor.indicators():
        if not ind.name.startswith(monitor.name + "."):
            _fail(f"{monitor.name}: indicator {ind.name!r} must start with '{monitor.name}.'")
        if ind.status not in STATUSES:
            _fail(f"{monitor.name}: indicator {ind.name} has status {ind.status!r}, not one of {STATUSES}")
        if not (ind.reason and ind.source):
            _fail(f"{monitor.name}: indicator {ind.name} needs a reason and a source")
    state = _round_trip(monitor.state_dict())
    why = fresh.validate_state_dict(state)
    if why is not None:
        _fail(f"{monitor.name}: validate_state_dict refused its own state: {why}")
    fresh.load_state_dict(state)
    a, b = fresh.stats(), monitor.stats()
    differ = [k for k in b if not (a.get(k) == b[k] or (math.isnan(a.get(k, 0.0)) and math.isnan(b[k])))]
    if differ:
        _fail(f"{monitor.name}: statistics differ after a state round trip: {differ}")
