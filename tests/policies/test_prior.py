"""The built-in step-size prior (chuck.policies.prior): its rule, its shipped versions, its cooldown.

The rejected versions are tested with their code, in tests/experiments/test_prior_variants.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import chuck
from chuck.core.observation import ObservationSpec
from chuck.policies.prior import COOLDOWN, CUT_GL, FLOOR, GUARD_GL, StepSizePrior

SPEC = ObservationSpec()
LOG3 = math.log(3.0)


def _obs(**features: float) -> np.ndarray:
    """An observation with ``features`` set and every other feature at its "not measured" value."""
    return SPEC.encode(features)


def test_versions_load_by_name() -> None:
    assert chuck.load_policy("prior").id == "prior@15"
    assert chuck.load_policy("prior@10").id == "prior@10"
    with pytest.raises(chuck.PolicyLoadError, match=r"unknown prior version '99': use one of \['10', '15'\]"):
        chuck.load_policy("prior@99")


@pytest.mark.parametrize("name", [None, "", "  ", 3])
def test_a_policy_name_that_is_no_name_says_what_a_name_is(name) -> None:
    with pytest.raises(chuck.PolicyLoadError, match="a policy is named by a non-empty string or a path"):
        chuck.load_policy(name)


@pytest.mark.parametrize(("h", "sign"), [(0.3, 1), (0.03, 0), (-0.2, -1)])
def test_hypergradient_band(h: float, sign: int) -> None:
    a = StepSizePrior().act(_obs(**{"step.hypergrad": h}))
    assert np.sign(a[0]) == sign and np.all(a[1:] == 0)


def _run(policy: StepSizePrior, total: int, interval: int, hypergrad: float = 0.0, has_total: float = 1.0) -> list[float]:
    """The lr multiplier after each decision of a run whose observations say ``hypergrad``."""
    policy.reset()
    log_mult, out = 0.0, []
    for step in range(interval, total + 1, interval):
        obs = _obs(**{"step.hypergrad": hypergrad, "ctrl.progress": step / total, "ctrl.has_total": has_total})
        log_mult += float(policy.act(obs)[0]) * LOG3
        out.append(math.exp(log_mult))
    return out


def test_cooldown_anneals_the_last_part_of_a_known_budget() -> None:
    mults = _run(StepSizePrior(version="10"), total=400, interval=20)
    start = int(len(mults) * (1 - COOLDOWN))
    assert all(m == 1.0 for m in mults[: start - 1]), "a tuned run is left alone until the cooldown"
    tail = mults[start - 1 :]
    assert all(b <= a for a, b in zip(tail, tail[1:])) and tail[-1] <= 3 * FLOOR
    # linear in the middle of each coming interval: halfway through the cooldown, about half
    mid = mults[int(len(mults) * (1 - COOLDOWN / 2)) - 1]
    assert 0.35 < mid < 0.65, mults


def test_cooldown_overrides_raises_but_keeps_cuts() -> None:
    raised = _run(StepSizePrior(version="10"), total=400, interval=20, hypergrad=0.3)
    assert raised[-1] < raised[int(len(raised) * (1 - COOLDOWN)) - 1], "no hypergradient raise undoes the descent"
    cut = _run(StepSizePrior(version="10"), total=400, interval=20, hypergrad=-0.3)
    plain = _run(StepSizePrior(version="10"), total=400, interval=20, hypergrad=-0.3, has_total=0.0)  # no budget: no cooldown
    assert cut[-1] <= plain[-1], "an overshoot is still cut in the cooldown"


def test_cooldown_state_survives_a_checkpoint() -> None:
    a, b = StepSizePrior(), StepSizePrior()
    obs = [_obs(**{"ctrl.progress": p, "ctrl.has_total": 1.0}) for p in np.linspace(0.05, 1.0, 20)]
    for o in obs[:16]:
        a.act(o)
    b.load_state_dict(a.state_dict())
    assert [a.act(o)[0] for o in obs[16:]] == [b.act(o)[0] for o in obs[16:]]


def test_a_real_run_anneals_under_chuck() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = chuck.ChuckOptimizer(
        torch.optim.AdamW(model.parameters(), lr=1e-2), "prior@10", model=model, total_steps=200, interval=10
    )
    x, y = torch.randn(256, 4), torch.randn(256, 1)
    for _ in range(200):
        idx = torch.randint(0, 256, (32,))
        loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
        loss.backward()
        opt.step(loss=loss)
        opt.zero_grad()
    lrs = [d.hyperparameters["lr"] for d in opt.decisions]
    assert lrs[-1] < 0.1 * 1e-2 and any("cooldown" in d.reason for d in opt.decisions)


@pytest.mark.parametrize(
    ("gl", "has_val", "expected"),
    [
        (0.0, 1.0, "raise"),  # validation at its best: the training-side rule decides
        ((GUARD_GL + CUT_GL) / 2, 1.0, "hold"),  # past its best: no raise
        (CUT_GL * 2, 1.0, "halve"),  # well past its best: ReduceLROnPlateau's halving
        (CUT_GL * 2, 0.0, "raise"),  # no validation loss observed: nothing to go by
    ],
)
def test_validation_guard(gl: float, has_val: float, expected: str) -> None:
    obs = _obs(**{"step.hypergrad": 0.4, "loss.has_val": has_val, "loss.overfit_gl": gl})
    a = float(StepSizePrior(version="10").act(obs)[0])
    assert {"raise": a > 0, "hold": a == 0, "halve": math.isclose(a, -math.log(2) / LOG3, rel_tol=1e-6)}[expected]


def test_version_10_warms_up_and_a_residual_on_it_carries_the_warmup() -> None:
    from chuck.policies.learned import LearnedPolicy
    from chuck.policies.prior import WARMUP

    assert chuck.load_policy("prior@10").warmup == WARMUP > 0
    shipped = chuck.load_policy("default")
    assert isinstance(shipped, LearnedPolicy)
    residual = LearnedPolicy(shipped.actor, {**shipped.card, "prior": "prior@10"})
    assert residual.warmup == WARMUP
    model = torch.nn.Linear(4, 1)
    opt = chuck.ChuckOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-2), residual, model=model, history=False)
    assert opt.action_spec.warmup_steps == WARMUP


def test_version_15_does_not_raise_steps_already_as_large_as_a_tuned_runs() -> None:
    from chuck.policies.prior import CONFIGS

    version = "15"
    gate = CONFIGS[version].raise_gate
    assert gate is not None
    high = {"step.hypergrad": 0.4}
    assert StepSizePrior(version=version).act(_obs(**high, **{"weights.update_ratio_log10": gate - 0.5}))[0] > 0
    assert StepSizePrior(version=version).act(_obs(**high, **{"weights.update_ratio_log10": gate + 0.1}))[0] == 0
    # without watched weights the feature takes its missing value, which does not gate
    assert StepSizePrior(version=version).act(_obs(**high))[0] > 0
    # lowering is never gated
    assert StepSizePrior(version=version).act(_obs(**{"step.hypergrad": -0.3, "weights.update_ratio_log10": 0.0}))[0] < 0


def test_a_config_is_the_rule_and_names_it() -> None:
    """A PriorConfig runs the same rule under its own version; the shipped ones by name are the same objects."""
    import dataclasses

    from chuck.policies.prior import CONFIGS, LATEST, PRIOR_10, PRIOR_15, PriorConfig

    assert CONFIGS == {"10": PRIOR_10, "15": PRIOR_15} and LATEST == "15"
    assert StepSizePrior(version="10").config is PRIOR_10 and StepSizePrior().config is PRIOR_15
    no_warmup = dataclasses.replace(PRIOR_10, version="lab", warmup=None)
    p = StepSizePrior(config=no_warmup)
    assert p.id == "prior@lab" and p.warmup is None and p.metadata()["warmup"] is None
    obs = [
        _obs(**{"step.hypergrad": h, "ctrl.progress": k / 20, "ctrl.has_total": 1.0})
        for k, h in enumerate(np.linspace(-0.3, 0.4, 20))
    ]
    ten = StepSizePrior(version="10")
    assert [p.act(o).tolist() for o in obs] == [ten.act(o).tolist() for o in obs], (
        "the warm-up is the optimizer's, not a decision"
    )
    with pytest.raises(ValueError, match=r"unknown prior version '3'; shipped: \['10', '15'\]"):
        StepSizePrior(version="3")
    with pytest.raises(dataclasses.FrozenInstanceError):
        PRIOR_15.raise_gate = None  # type: ignore[misc]
    assert isinstance(PRIOR_15, PriorConfig)
