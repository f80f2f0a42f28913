"""Residual policies (chuck.policies.residual): one sum for meta-training and deployment."""

from __future__ import annotations

import numpy as np
import pytest

import chuck
from chuck.policies.learned import LearnedPolicy
from chuck.policies.prior import StepSizePrior
from chuck.policies.residual import ResidualPolicy, make_prior


def _observations(n: int = 16, version: str | None = None) -> list[np.ndarray]:
    space = chuck.ObservationSpec(version).space
    space.seed(5)
    return [space.sample() for _ in range(n)]


def test_the_sum_is_clipped_and_keeps_the_corrections_dtype() -> None:
    prior = np.array([0.8, 0.0, -0.5, 0.0], dtype=np.float32)
    for dtype in (np.float32, np.float64):
        correction = np.array([0.5, -0.25, -0.75, 0.1], dtype=dtype)
        out = ResidualPolicy.combine(prior, correction)
        assert out.dtype == dtype
        np.testing.assert_array_equal(out, np.clip(prior.astype(dtype) + correction, -1.0, 1.0))


def test_a_residual_is_its_prior_plus_its_correction_and_carries_the_priors_schedule() -> None:
    correction = np.array([0.25, 0.5, -0.5, 0.0], dtype=np.float32)
    residual = ResidualPolicy(StepSizePrior(version="10"), lambda obs: correction)
    alone = StepSizePrior(version="10")
    assert residual.warmup == alone.warmup and residual.anneal is None and residual.prior is not None
    for obs in _observations():
        np.testing.assert_array_equal(residual.act(obs), np.clip(alone.act(obs) + correction, -1.0, 1.0))
    assert residual.state_dict() == {"prior": alone.state_dict()}
    reasons = residual.explain(_observations(1)[0])
    assert all(k.startswith("prior: ") for r in reasons.values() for k in r)
    with pytest.raises(RuntimeError, match="compose"):
        ResidualPolicy(StepSizePrior()).act(_observations(1)[0])


def test_the_deployed_learned_policy_is_the_residual_sum() -> None:
    default = chuck.load_policy("default")
    assert isinstance(default, LearnedPolicy) and default.residual is not None and default.prior is not None
    prior = make_prior(default.card["prior"], default.observation_version)
    assert prior is not None
    for obs in _observations(version=default.observation_version):
        want = ResidualPolicy.combine(prior.act(obs), default.correction(obs))
        np.testing.assert_array_equal(default.act(obs), want)
    bare = LearnedPolicy(default.actor, {k: v for k, v in default.card.items() if k != "prior"})
    assert bare.prior is None and bare.residual is None and bare.warmup is None
    obs = _observations(1, default.observation_version)[0]
    np.testing.assert_array_equal(bare.act(obs), default.correction(obs))


def test_the_environment_adds_the_agents_action_with_the_same_sum() -> None:
    from chuck.envs import TrainingControlEnv

    env = TrainingControlEnv(tasks="tabular.wine_mlp", interval=5, budget_scale=0.1, prior="prior@10", p_no_val=0.0)
    env.reset(seed=0)
    shadow = StepSizePrior(version="10")
    correction = np.array([0.3, -0.2, 0.1, 0.0], dtype=np.float32)
    try:
        for _ in range(3):
            pending = env.opt.controller.pending
            want = ResidualPolicy.combine(shadow.act(pending), np.asarray(correction, dtype=np.float64))
            env.step(correction)
            assert env.opt.decisions[-1].action == pytest.approx(list(want), abs=0)
    finally:
        env.close()


def test_an_unknown_prior_is_refused() -> None:
    assert make_prior(None, chuck.ObservationSpec().version) is None
    with pytest.raises(ValueError, match="unknown prior 'prior@4'"):
        make_prior("prior@4", chuck.ObservationSpec().version)
