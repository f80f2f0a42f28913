"""A corrupted checkpoint is refused whole or runs: never half-loaded, never a crash later.

Every leaf of ``state_dict()["chuck"]`` (recursively through dicts and lists, the first two
elements of each list) is replaced with each of a dozen odd values. For each variant either
``load_state_dict`` raises :class:`chuck.CheckpointError` and the optimizer's state (chuck's and the
base optimizer's) is exactly as it was, or it loads and the run goes on: more training steps,
``observe()``, ``health()`` and ``state_dict()`` all work.
"""

from __future__ import annotations

import copy
import math
import random
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

import chuck
from chuck.core.checkpoint import CheckpointError
from chuck.monitors import Indicator, Monitor, StepRecord
from tests.conftest import make_net, run_steps

TRAIN_STEPS = 60  # the run whose checkpoint is corrupted
TOTAL_STEPS = 80  # its budget: the default policy's cooldown (the last 30%) has begun when it is saved
TARGET_STEPS = 40  # the run it is loaded into (another state: a half-load would show)
MORE_STEPS = 30  # the run after a variant that loaded
LIST_FANOUT = 2  # list elements followed per list
#: What a decision record says when asking the policy failed (chuck held instead).
POLICY_FAILED = ("asking the policy raised", "policy returned", "the prior returned")

#: The odd values, by name (each call makes a fresh one: a loaded tensor must not be shared).
ODD: dict[str, Callable[[], Any]] = {
    "none": lambda: None,
    "nan": lambda: math.nan,
    "inf": lambda: math.inf,
    "minus_one": lambda: -1,
    "huge_int": lambda: 10**30,
    "string": lambda: "odd",
    "bool": lambda: True,
    "empty_list": lambda: [],
    "dict": lambda: {"odd": 1},
    "wrong_shape_tensor": lambda: torch.zeros(3, 5),
    "float_tensor": lambda: torch.tensor(2.5),
    "nested_list": lambda: [[1.0, 2.0], [3.0]],
}

Path = tuple[Any, ...]


def leaves(node: Any, path: Path = ()) -> Iterator[Path]:
    """Paths to every leaf under ``node``: dicts and lists are walked (a list's first ``LIST_FANOUT``
    elements), anything else (numbers, strings, tensors, None, empty containers) is a leaf."""
    if isinstance(node, dict) and node:
        for k, v in node.items():
            yield from leaves(v, (*path, k))
    elif isinstance(node, (list, tuple)) and node:
        for i, v in enumerate(node[:LIST_FANOUT]):
            yield from leaves(v, (*path, i))
    else:
        yield path


def replaced(sd: dict[str, Any], path: Path, value: Any) -> dict[str, Any]:
    """A deep copy of ``sd`` with ``sd["chuck"][path...]`` set to ``value`` (tuples rebuilt around it)."""

    def put(node: Any, rest: Path) -> Any:
        if not rest:
            return value
        if isinstance(node, tuple):
            items = list(node)
            items[rest[0]] = put(items[rest[0]], rest[1:])
            return tuple(items)
        node[rest[0]] = put(node[rest[0]], rest[1:])
        return node

    out = copy.deepcopy(sd)
    out["chuck"] = put(out["chuck"], path)
    return out


def same(a: Any, b: Any) -> bool:
    """Deep equality that takes NaN as equal to NaN and compares tensors by dtype, shape and values."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and bool(torch.equal(a, b) or torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num()))
        )
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


class Fuzz:
    """One policy's run, its checkpoint, and a target optimizer to load the variants into."""

    def __init__(self, policy: str) -> None:
        self.policy = policy
        torch.manual_seed(0)
        model, opt = self._fresh(0)
        run_steps(model, opt, 0, TRAIN_STEPS, observe_every=10)
        self.source = opt.state_dict()
        model, opt = self._fresh(1)
        run_steps(model, opt, 0, TARGET_STEPS, observe_every=10)
        self.target_model = copy.deepcopy(model.state_dict())
        self.target = copy.deepcopy(opt.state_dict())

    def _fresh(self, seed: int) -> tuple[torch.nn.Module, chuck.ChuckOptimizer]:
        model = make_net(seed, dropout=0.2)
        opt = chuck.ChuckOptimizer(
            torch.optim.AdamW(model.parameters(), lr=1e-3),
            self.policy,
            model=model,
            total_steps=TOTAL_STEPS,
            interval=10,
            history=False,
        )
        opt.register_knob("augment", 0.5, 0.1, 1.0)
        opt.advise = False
        return model, opt

    def variants(self) -> list[tuple[Path, str]]:
        return [(path, name) for path in leaves(self.source["chuck"]) for name in ODD]

    def check(self, path: Path, name: str) -> str:
        """``"refused"`` or ``"loaded"``; raises AssertionError describing any failure."""
        sd = replaced(self.source, path, ODD[name]())
        model, opt = self._fresh(1)
        model.load_state_dict(self.target_model)
        opt.load_state_dict(copy.deepcopy(self.target))
        before = opt.state_dict()
        weights = copy.deepcopy(model.state_dict())
        where = f"chuck.{'.'.join(map(str, path))} = {name}"
        try:
            opt.load_state_dict(sd)
        except CheckpointError:
            assert same(opt.state_dict(), before), f"{where}: refused, but the optimizer's state changed"
            assert same(model.state_dict(), weights), f"{where}: refused, but the model changed"
            return "refused"
        except Exception as exc:
            raise AssertionError(f"{where}: load raised {type(exc).__name__}: {exc}") from exc
        try:
            run_steps(model, opt, TRAIN_STEPS, TRAIN_STEPS + MORE_STEPS, observe_every=10)
            opt.observe(val_loss=1.0, accuracy=0.5)
            opt.health()
            opt.state_dict()
        except Exception as exc:
            raise AssertionError(f"{where}: loaded, then {type(exc).__name__}: {exc}") from exc
        failed = [d.reason for d in opt.decisions if d.step > TRAIN_STEPS and any(f in d.reason for f in POLICY_FAILED)]
        assert not failed, f"{where}: loaded, then the policy failed: {failed[0]}"
        return "loaded"


_FUZZ: dict[str, Fuzz] = {}


def _fuzz(policy: str) -> Fuzz:
    if policy not in _FUZZ:
        _FUZZ[policy] = Fuzz(policy)
    return _FUZZ[policy]


def _run(fuzz: Fuzz, variants: list[tuple[Path, str]]) -> dict[str, Any]:
    outcome: dict[str, Any] = {"refused": 0, "loaded": 0, "failures": []}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path, name in variants:
            try:
                outcome[fuzz.check(path, name)] += 1
            except AssertionError as exc:
                outcome["failures"].append(str(exc).splitlines()[0])
    return outcome


def sample(variants: list[tuple[Path, str]], seed: str, decision_leaves: int = 30) -> list[tuple[Path, str]]:
    """Every leaf outside the decision records once, each with an odd value drawn for it, and
    ``decision_leaves`` leaves of the records (hundreds of alike observation values) likewise."""
    rng = random.Random(seed)
    paths = list(dict.fromkeys(p for p, _ in variants))
    records = [p for p in paths if p[0] == "decisions"]
    chosen = [p for p in paths if p[0] != "decisions"] + rng.sample(records, min(decision_leaves, len(records)))
    return [(p, rng.choice(list(ODD))) for p in chosen]


@pytest.mark.parametrize("policy", ["default", "heuristic"])
def test_sampled_corruptions_are_refused_or_run(policy: str) -> None:
    fuzz = _fuzz(policy)
    variants = fuzz.variants()
    assert len(variants) > 1000, "the checkpoint has fewer leaves than expected: is the walk broken?"
    outcome = _run(fuzz, sample(variants, f"fuzz-{policy}"))
    assert not outcome["failures"], "\n".join(outcome["failures"])
    assert outcome["refused"] and outcome["loaded"]


class _BrittleMonitor(Monitor):
    """A user's monitor whose check passes what its load then fails on: loaded after chuck's action state,
    guardrails and the base optimizer's state, so a failure there would leave a half-loaded optimizer."""

    name = "brittle"

    def __init__(self) -> None:
        self.seen = 0

    def on_step(self, record: StepRecord) -> None:
        self.seen += 1

    def stats(self) -> dict[str, float]:
        return {"brittle.seen": float(self.seen)}

    def indicators(self) -> list[Indicator]:
        return []

    def state_dict(self) -> dict[str, Any]:
        return {"seen": self.seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["seen"] > 50:
            raise RuntimeError("cannot take this many")
        self.seen = state["seen"]


def test_a_load_that_fails_midway_is_undone_whole() -> None:
    def fresh(seed: int) -> tuple[torch.nn.Module, chuck.ChuckOptimizer]:
        model = make_net(seed, dropout=0.2)
        opt = chuck.ChuckOptimizer(
            torch.optim.AdamW(model.parameters(), lr=1e-3),
            "heuristic",
            model=model,
            interval=10,
            monitors=[_BrittleMonitor()],
            history=False,
        )
        opt.advise = False
        return model, opt

    model, opt = fresh(0)
    run_steps(model, opt, 0, 60, observe_every=10)
    checkpoint = opt.state_dict()
    target_model, target = fresh(1)
    run_steps(target_model, target, 0, 20, observe_every=10)
    before, weights = target.state_dict(), copy.deepcopy(target_model.state_dict())
    dropout = [m.p for m in target_model.modules() if isinstance(m, torch.nn.Dropout)]
    decisions = list(target.decisions)
    with pytest.raises(CheckpointError, match="chuck.monitors.*RuntimeError: cannot take this many"):
        target.load_state_dict(checkpoint)
    assert same(target.state_dict(), before), "a load that failed midway left part of the checkpoint in"
    assert same(target_model.state_dict(), weights)
    assert [m.p for m in target_model.modules() if isinstance(m, torch.nn.Dropout)] == dropout
    assert list(target.decisions) == decisions and target.step_count == 20
    run_steps(target_model, target, 20, 40, observe_every=10)  # and the run goes on as it was


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["default", "heuristic"])
def test_every_corruption_is_refused_or_runs(policy: str) -> None:
    """Every odd value at every leaf outside the decision records, and at 30 of the records' leaves (hundreds
    of alike observation values: ``python -m tests.core.test_checkpoint_fuzz`` walks them all)."""
    fuzz = _fuzz(policy)
    variants = fuzz.variants()
    records = list(dict.fromkeys(p for p, _ in variants if p[0] == "decisions"))
    chosen = set(random.Random(f"every-{policy}").sample(records, min(30, len(records))))
    outcome = _run(fuzz, [(p, v) for p, v in variants if p[0] != "decisions" or p in chosen])
    assert not outcome["failures"], "\n".join(outcome["failures"])


if __name__ == "__main__":  # the figures: python -m tests.core.test_checkpoint_fuzz [policy ...]
    for policy in sys.argv[1:] or ["default", "heuristic"]:
        fuzz = Fuzz(policy)
        variants = fuzz.variants()
        result = _run(fuzz, variants)
        print(
            f"{policy}: {len(variants)} variants over {len(variants) // len(ODD)} leaves: "
            f"{result['refused']} refused, {result['loaded']} loaded and trained, {len(result['failures'])} failures"
        )
        for line in result["failures"]:
            print("  ", line)
