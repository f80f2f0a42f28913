"""The step-size prior's lab versions (experiments/prior_variants.py): each switch, and the ablation's names.

The shipped versions (10, 15) are tested with the product, in tests/policies/test_prior.py."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import chuck
from chuck.core.observation import ObservationSpec
from chuck.policies.prior import CONFIGS, COOLDOWN, CUT_GL, PRIOR_10, StepSizePrior
from chuck.testing import check_policy
from experiments.prior_variants import (
    DIST_HIGH,
    EARLY_MARGIN,
    FAST_INTERVAL,
    LAB_VERSIONS,
    NO_BOUND,
    RAISE_AT,
    VAL_FLOOR,
    VARIANTS,
    PriorVariant,
)

SPEC = ObservationSpec()
LOG3 = math.log(3.0)


def _obs(**features: float) -> np.ndarray:
    """An observation with ``features`` set and every other feature at its "not measured" value."""
    return SPEC.encode(features)


def _run(policy: StepSizePrior, total: int, interval: int, hypergrad: float = 0.0, has_total: float = 1.0) -> list[float]:
    """The lr multiplier after each decision of a run whose observations say ``hypergrad``."""
    policy.reset()
    log_mult, out = 0.0, []
    for step in range(interval, total + 1, interval):
        obs = _obs(**{"step.hypergrad": hypergrad, "ctrl.progress": step / total, "ctrl.has_total": has_total})
        log_mult += float(policy.act(obs)[0]) * LOG3
        out.append(math.exp(log_mult))
    return out


@pytest.fixture
def lab():
    """The lab versions registered as ``prior@N`` for one test (the registry is process-wide)."""
    from experiments import lab_policies

    lab_policies.register()
    yield lab_policies
    lab_policies.unregister()


def _streams(n: int = 4, length: int = 40) -> list[list[np.ndarray]]:
    """Observation streams that reach every part of the rule: random features, a known budget's progress."""
    out = []
    for s in range(n):
        r = np.random.default_rng(s)
        seq = []
        for k in range(length):
            f = {
                "step.hypergrad": float(r.normal(0.05, 0.2)),
                "ctrl.skip_rate": float(r.random() < 0.1) * float(r.random()),
                "loss.log_slope": float(r.normal(0, 0.5)),
                "grad.norm_trend": float(r.normal(0, 0.8)),
                "ctrl.has_total": float(s % 2 == 0),
                "ctrl.progress": (k + 1) / length,
                "loss.has_val": float(r.random() < 0.7),
                "loss.overfit_gl": float(abs(r.normal(0, 0.2))),
                "loss.gen_gap": float(r.normal(0, 1.0)),
                "loss.log_ratio_initial": float(r.uniform(-10, 1)),
                "weights.update_ratio_log10": float(r.normal(-2.0, 0.6)),
                "weights.update_cosine": float(r.choice([0.0, r.uniform(-1, 1)])),
                "step.log10_update_over_dhat": float(r.choice([3.0, r.normal(0, 1.5)])),
            }
            seq.append(SPEC.encode(f))
        out.append(seq)
    return out


def _actions(policy: StepSizePrior, streams: list[list[np.ndarray]]) -> list[bytes]:
    out = []
    for seq in streams:
        policy.reset()
        out += [np.asarray(policy.act(o)).tobytes() + repr(policy.explain(o)).encode() for o in seq]
    return out


@pytest.mark.parametrize("version", ["10", "15"])
def test_the_variant_rule_with_every_switch_off_is_the_products(version: str) -> None:
    """The lab extends the product's rule: on the shipped configurations it decides bit for bit as it."""
    assert dataclasses.asdict(CONFIGS[version]).items() <= dataclasses.asdict(VARIANTS[version]).items()
    streams = _streams()
    assert _actions(PriorVariant(version=version), streams) == _actions(StepSizePrior(version=version), streams)
    assert _actions(PriorVariant(config=CONFIGS[version]), streams) == _actions(StepSizePrior(version=version), streams)


def test_version_3_is_prior_10_without_its_warmup() -> None:
    """tests/policies/test_default_inputs.py runs prior@3 as the product's rule on that configuration."""
    streams = _streams()
    product = StepSizePrior(config=dataclasses.replace(PRIOR_10, version="3", warmup=None))
    assert _actions(PriorVariant(version="3"), streams) == _actions(product, streams)
    assert PriorVariant(version="3").metadata() == product.metadata()


def test_lab_versions_load_by_name_and_keep_the_contract(lab) -> None:
    assert lab.lab_prior_names() == [f"prior@{v}" for v in [*range(1, 21), 22, 23] if v not in (10, 15)]
    for name in lab.lab_prior_names():
        policy = chuck.load_policy(name)
        assert policy.id == name and isinstance(policy, PriorVariant)
        check_policy(policy)
    with pytest.raises(chuck.PolicyLoadError, match=r"unknown prior version '99': use one of \['1', '2', .*'10'"):
        chuck.load_policy("prior@99")  # the versions listed in their order, not as strings sort
    lab.unregister()
    with pytest.raises(chuck.PolicyLoadError, match="--tasks-module experiments.lab_policies"):
        chuck.load_policy("prior@4")


def test_without_total_steps_version_2_is_version_1() -> None:
    for h in (-0.3, 0.0, 0.3):
        assert _run(PriorVariant(version="2"), 400, 20, h, has_total=0.0) == _run(
            PriorVariant(version="1"), 400, 20, h, has_total=0.0
        )


def test_version_1_has_no_cooldown_and_version_2_no_guard() -> None:
    cut = _run(PriorVariant(version="2"), total=400, interval=20, hypergrad=-0.3)
    plain = _run(PriorVariant(version="1"), total=400, interval=20, hypergrad=-0.3)
    assert cut[-1] <= plain[-1], "an overshoot is still cut in the cooldown"
    obs = _obs(**{"step.hypergrad": 0.4, "loss.has_val": 1.0, "loss.overfit_gl": CUT_GL * 2})
    assert PriorVariant(version="2").act(obs)[0] > 0, "version 2 has no guard"
    assert PriorVariant(version="3").warmup is None, "earlier versions start at the user's lr"


@pytest.mark.parametrize(
    ("version", "ratio", "h", "expected"),
    [
        ("5", 2.0, 0.0, "lower"),  # steps 100x the distance bound, no descent left along them
        ("5", 2.0, 0.3, "hold"),  # the cosine says "raise", the bound says the steps are large
        ("5", 0.0, 0.0, "hold"),  # within the bound: version 3's rule decides
        ("5", NO_BOUND, 0.0, "lower"),  # no positive bound at all
        ("6", NO_BOUND, 0.0, "hold"),  # version 6 ignores a run with no positive bound
        ("6", 2.0, 0.0, "lower"),
        ("3", 2.0, 0.3, "raise"),  # version 3 has no distance guard
    ],
)
def test_distance_guard(version: str, ratio: float, h: float, expected: str) -> None:
    assert ratio > DIST_HIGH or expected != "lower"
    a = float(PriorVariant(version=version).act(_obs(**{"step.log10_update_over_dhat": ratio, "step.hypergrad": h}))[0])
    assert {"lower": a < 0, "hold": a == 0, "raise": a > 0}[expected], a


def test_version_7_decides_twice_as_often(lab) -> None:
    assert chuck.load_policy("prior@7").interval == FAST_INTERVAL < 20
    assert chuck.load_policy("prior@3").interval is None, "earlier versions take the user's interval"


def test_version_8_raises_only_on_persistent_evidence() -> None:
    high, tuned = _obs(**{"step.hypergrad": 0.4}), _obs(**{"step.hypergrad": 0.03})
    p = PriorVariant(version="8")
    assert [float(p.act(o)[0]) > 0 for o in (high, high, high, tuned, high, high)] == [False, True, True, False, False, True]
    assert p.act(_obs(**{"step.hypergrad": -0.3}))[0] < 0, "a lower needs no second opinion"
    # the evidence survives a checkpoint, and reset() forgets it (a new run)
    a, b = PriorVariant(version="8"), PriorVariant(version="8")
    a.act(high)
    b.load_state_dict(a.state_dict())
    assert b.act(high)[0] > 0
    b.reset()
    assert b.act(high)[0] == 0


@pytest.mark.parametrize(("gap", "halves"), [(0.5, True), (-0.2, False)])
def test_version_9_halves_only_an_overfitting_run(gap: float, halves: bool) -> None:
    """Validation 2x its best: version 3 halves whatever the training loss; version 9 only when the
    validation loss is above the training loss (a damaged run has both losses up)."""
    obs = _obs(**{"loss.has_val": 1.0, "loss.overfit_gl": CUT_GL * 5, "loss.gen_gap": gap})
    assert PriorVariant(version="3").act(obs)[0] < 0
    assert bool(PriorVariant(version="9").act(obs)[0] < 0) is halves


def test_version_11_holds_a_raise_at_the_first_decision_only() -> None:
    high, low = _obs(**{"step.hypergrad": 0.4}), _obs(**{"step.hypergrad": -0.3})
    p = PriorVariant(version="11")
    assert p.act(high)[0] == 0, "the first decision does not raise"
    assert p.act(high)[0] > 0, "later ones do"
    p.reset()
    assert p.act(low)[0] < 0, "a first decision may still lower"
    q = PriorVariant(version="11")
    q.load_state_dict(p.state_dict())
    assert q.act(high)[0] > 0, "the count survives a checkpoint"


def test_version_12_asks_for_more_evidence_early_in_a_run() -> None:
    mid = _obs(**{"step.hypergrad": RAISE_AT + EARLY_MARGIN / 2})
    assert PriorVariant(version="10").act(mid)[0] > 0
    p = PriorVariant(version="12")
    acts = [float(p.act(mid)[0]) for _ in range(12)]
    assert acts[0] == 0, "the first decision needs a cosine above a tuned run's early baseline"
    assert acts[-1] > 0, "late in a run the threshold is version 10's"


def test_version_13_lowers_on_a_cosine_low_for_the_point_of_the_run() -> None:
    lukewarm = _obs(**{"step.hypergrad": 0.0})
    assert PriorVariant(version="10").act(lukewarm)[0] == 0
    p = PriorVariant(version="13")
    acts = [float(p.act(lukewarm)[0]) for _ in range(8)]
    assert acts[0] < 0, "early, a tuned run reads a clearly positive cosine: zero means too high"
    assert acts[-1] == 0, "late in a run the band is version 10's"


def test_version_14_does_not_raise_steps_already_as_large_as_a_tuned_runs() -> None:
    gate = VARIANTS["14"].raise_gate
    assert gate is not None and gate < VARIANTS["15"].raise_gate  # type: ignore[operator]
    high = {"step.hypergrad": 0.4}
    assert PriorVariant(version="14").act(_obs(**high, **{"weights.update_ratio_log10": gate - 0.5}))[0] > 0
    assert PriorVariant(version="14").act(_obs(**high, **{"weights.update_ratio_log10": gate + 0.1}))[0] == 0
    assert PriorVariant(version="14").act(_obs(**high))[0] > 0
    assert PriorVariant(version="14").act(_obs(**{"step.hypergrad": -0.3, "weights.update_ratio_log10": 0.0}))[0] < 0


@pytest.mark.parametrize(
    ("gap", "ratio", "silenced"),
    [
        (1.76, -10.0, True),  # the ResNet: validation 5.8e-5 of a ~2 starting loss (ratio at its clip)
        (0.5, -8.0, True),  # validation ~5e-4 of the starting loss
        (0.2, -1.0, False),  # an ordinary run past its best validation loss
        (0.5, -6.0, False),  # validation ~4e-3 of the starting loss: above the floor
        (3.0, -10.0, False),  # validation >= 20x training (gen_gap at its clip): overfitting, the guard's case
    ],
)
def test_version_16_silences_the_validation_guard_at_near_zero_losses(gap: float, ratio: float, silenced: bool) -> None:
    features = {"loss.has_val": 1.0, "loss.overfit_gl": 2.0, "loss.gen_gap": gap, "loss.log_ratio_initial": ratio}
    assert silenced is (gap + ratio < math.log(VAL_FLOOR) and gap < 3.0)
    assert PriorVariant(version="10").act(_obs(**features))[0] < 0, "version 10 halves on GL 200%"
    a = float(PriorVariant(version="16").act(_obs(**features))[0])
    assert (a == 0.0) is silenced and (a < 0.0) is (not silenced)
    # raises are silenced or not with the cut: a raise the cosine asks for is dropped only by an active guard
    raised = float(PriorVariant(version="16").act(_obs(**features, **{"step.hypergrad": 0.4}))[0])
    assert (raised > 0) is silenced


@pytest.mark.parametrize(
    ("h", "ratio", "decades"),
    [
        (0.4, -3.0, 1.0),  # 1.5 decades below a tuned run's steps: the full decade
        (0.4, -2.5, (-1.89 + 2.5) / 0.74),  # at the edge: most of the way to a tuned run's step size
        (0.4, -2.4, None),  # steps not far from a tuned run's: version 15's raise
        (0.15, -3.0, None),  # a weak cosine: version 15's raise
        (-0.3, -3.0, None),  # the cosine says too high: no far raise, version 15 lowers
    ],
)
def test_version_17_raises_by_up_to_a_decade_when_both_signals_say_far_too_low(
    h: float, ratio: float, decades: float | None
) -> None:
    from chuck.core.actions import ActionSpec

    obs = _obs(**{"step.hypergrad": h, "weights.update_ratio_log10": ratio})
    p17 = PriorVariant(version="17")
    assert p17.action_version == "3" and p17.metadata()["action_version"] == "3"
    log_change = float(p17.act(obs)[0]) * float(ActionSpec(version="3").steps[0])
    v15 = float(PriorVariant(version="15").act(obs)[0]) * LOG3
    if decades is None:
        assert log_change == pytest.approx(v15, rel=1e-6), "every other move is version 15's"
    else:
        assert log_change == pytest.approx(decades * math.log(10.0), rel=1e-6)
        assert log_change > LOG3, "beyond v2's reach"


def test_version_17_runs_under_chuck_on_action_spec_v3(lab) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = chuck.ChuckOptimizer(torch.optim.SGD(model.parameters(), lr=1e-4), policy="prior@17", history=False)
    assert opt.action_spec.version == "3"
    for _ in range(60):
        x = torch.randn(16, 4)
        loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
        loss.backward()
        opt.step(loss=loss)
        opt.zero_grad()
    assert len(opt.decisions) >= 2


def test_version_18_anneals_per_step_and_only_cuts_in_its_cooldown(lab) -> None:
    from chuck.policies.learned import LearnedPolicy

    p18 = chuck.load_policy("prior@18")
    assert p18.anneal == COOLDOWN and p18.metadata()["anneal"] == COOLDOWN
    assert chuck.load_policy("prior@15").anneal is None
    # in the cooldown the decisions no longer decay the lr (the optimizer does, per step); raises are dropped
    assert _run(PriorVariant(version="18"), total=400, interval=20) == [1.0] * 20
    raised = _run(PriorVariant(version="18"), total=400, interval=20, hypergrad=0.3)
    start = int(20 * (1 - COOLDOWN))
    assert raised[start - 2] < raised[start - 1] == raised[-1], "raises until the cooldown, none in it"
    lowered = _run(PriorVariant(version="18"), total=400, interval=20, hypergrad=-0.3)
    assert all(b < a for a, b in zip(lowered, lowered[1:])), "cuts pass in the cooldown too"
    # deployment: the optimizer takes the anneal from the policy (and a residual from its registered prior)
    model = torch.nn.Linear(4, 1)
    opt = chuck.ChuckOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-2), "prior@18", total_steps=100, history=False)
    assert (opt.action_spec.anneal_start, opt.action_spec.anneal_end) == (70, 100)
    shipped = chuck.load_policy("default")
    assert isinstance(shipped, LearnedPolicy)
    assert LearnedPolicy(shipped.actor, {**shipped.card, "prior": "prior@18"}).anneal == COOLDOWN


@pytest.mark.parametrize(("cosine", "lowers"), [(0.16, True), (0.45, True), (0.9, False), (0.0, False)])
def test_version_19_lowers_on_sign_flipping_updates(cosine: float, lowers: bool) -> None:
    """An update cosine below UNSTABLE_COS lowers even where the hypergradient asks for a raise; 0 is the
    observation's "not measured" value, not evidence."""
    obs = _obs(**{"step.hypergrad": 0.4, "weights.update_ratio_log10": -2.0, "weights.update_cosine": cosine})
    a19 = float(PriorVariant(version="19").act(obs)[0])
    a15 = float(PriorVariant(version="15").act(obs)[0])
    assert a15 > 0
    if lowers:
        assert a19 < 0
    else:
        assert a19 == a15


@pytest.mark.parametrize(
    ("features", "expected"),
    [
        ({"step.hypergrad": -0.3, "loss.log_ratio_initial": 0.0}, 0),  # nothing learned yet: a plateau, hold
        ({"step.hypergrad": -0.3, "loss.log_ratio_initial": -0.05}, 0),  # still within 10% of the start
        ({"step.hypergrad": -0.3, "loss.log_ratio_initial": -1.0}, -1),  # past its start: an overshoot, lower
        ({"ctrl.skip_rate": 0.2, "loss.log_ratio_initial": 0.0}, -1),  # instability lowers on a plateau too
        ({"step.hypergrad": 0.4, "loss.log_ratio_initial": 0.0}, 1),  # raises are not held
    ],
)
def test_version_20_holds_cosine_lowers_while_the_loss_sits_at_its_start(features: dict, expected: int) -> None:
    assert np.sign(PriorVariant(version="20").act(_obs(**features))[0]) == expected
    if expected == 0:  # what version 10, the same rule without the hold, does there
        assert PriorVariant(version="10").act(_obs(**features))[0] < 0


def _plateau(h: float, cv: float = 0.2, moved: float = 0.0, mult: float = 0.0, **more: float) -> np.ndarray:
    """A decision on a run whose loss moved ``moved`` (log ratio to its start), with gradient-norm CV ``cv``
    and chuck's lr multiplier exp(``mult``)."""
    f = {"step.hypergrad": h, "loss.log_ratio_initial": moved, "grad.norm_cv": cv, "ctrl.log_lr_mult": mult}
    return _obs(**f, **more)


@pytest.mark.parametrize(
    ("obs", "v22", "v23", "held"),
    [
        (_plateau(-0.3), 0, 0, True),  # steady plateau: both hold, and hold a residual's cuts
        (_plateau(-0.3, cv=0.8), -1, -1, False),  # the gradient norm swings: lowered as by version 10
        (_plateau(-0.3, moved=-1.0), -1, -1, False),  # the loss has moved: no plateau
        (_plateau(-0.3, mult=1.0), 0, -1, None),  # above the user's lr: version 23 lets chuck undo its climb
        (_plateau(0.4), 1, 1, False),  # a raise is not held, and a correction may temper it
        (_plateau(0.0), 0, 0, True),  # in the band: held, so no learned cut either
    ],
)
def test_versions_22_and_23_hold_lowers_on_a_steady_plateau(obs: np.ndarray, v22: int, v23: int, held: bool | None) -> None:
    p22, p23 = PriorVariant(version="22"), PriorVariant(version="23")
    assert np.sign(p22.act(obs)[0]) == v22 and np.sign(p23.act(obs)[0]) == v23
    if held is not None:
        assert p22.holds_plateau is held and p23.holds_plateau is held
    else:
        assert p22.holds_plateau and not p23.holds_plateau
    v20 = PriorVariant(version="20")
    v20.act(obs)
    assert not v20.holds_plateau, "version 20 never binds a residual"


def test_every_version_is_in_the_ablation() -> None:
    assert sorted(VARIANTS, key=int) == [str(v) for v in [*range(1, 21), 22, 23]]
    assert set(LAB_VERSIONS) == set(VARIANTS) - set(CONFIGS)
