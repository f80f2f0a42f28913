"""Derived residual policies (chuck.policies.derive): averaging, shrinking, moving to another prior."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import chuck
from chuck.policies.artifact import load_artifact, save_artifact
from chuck.policies.derive import derive_residual


@pytest.fixture(scope="module")
def default() -> chuck.policies.learned.LearnedPolicy:
    return chuck.load_policy("default")


def _observations(n: int = 32) -> np.ndarray:
    space = chuck.ObservationSpec().space
    space.seed(3)
    return np.stack([space.sample() for _ in range(n)])


def _residual(policy, obs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return policy.actor(torch.as_tensor(obs, dtype=torch.float32)).numpy()


def _perturbed(policy, tmp_path, seed: int):
    """A copy of ``policy`` with other actor weights (a stand-in for another snapshot of its run)."""
    actor, card = derive_residual([policy])
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in actor.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return load_artifact(save_artifact(actor, tmp_path / f"snap{seed}", card))


def test_average_of_two_snapshots_is_their_mean(default, tmp_path) -> None:
    a, b = _perturbed(default, tmp_path, 1), _perturbed(default, tmp_path, 2)
    actor, card = derive_residual([a, b], sources=["a", "b"])
    for k, v in actor.state_dict().items():
        torch.testing.assert_close(v, (a.actor.state_dict()[k].double() + b.actor.state_dict()[k].double()).div(2).to(v.dtype))
    assert card["derived"] == {"from": ["a", "b"], "scale": 1.0, "prior": default.card["prior"]}
    assert "sha256" not in card and "evaluation" not in card  # they described the originals


def test_scale_shrinks_the_residual_and_keeps_the_prior(default, tmp_path) -> None:
    obs = _observations()
    actor, card = derive_residual([default], scale=0.5)
    half = load_artifact(save_artifact(actor, tmp_path / "half", card))
    np.testing.assert_allclose(_residual(half, obs), 0.5 * _residual(default, obs), rtol=1e-5, atol=1e-6)
    assert half.card["prior"] == default.card["prior"] and half.id != default.id
    for o in obs[:4]:  # the action is the same prior plus half the correction, clipped
        default.reset(), half.reset()
        prior = default.prior.act(o)
        default.prior.reset()
        np.testing.assert_allclose(half.act(o), np.clip(prior + 0.5 * _residual(default, o[None])[0], -1, 1), atol=1e-6)


def test_moving_to_another_prior(default, tmp_path) -> None:
    actor, card = derive_residual([default], prior="prior@15")
    moved = load_artifact(save_artifact(actor, tmp_path / "moved", card))
    assert moved.prior is not None and moved.prior.version == "15" and card["derived"]["prior"] == "prior@15"
    np.testing.assert_allclose(_residual(moved, _observations()), _residual(default, _observations()), atol=0)


def test_observation_range_is_the_union(default, tmp_path) -> None:
    actor, card = derive_residual([default])
    low, high = list(card["observation_stats"]["low"]), list(card["observation_stats"]["high"])
    low[0], high[1] = low[0] - 1.0, high[1] + 2.0  # another snapshot that saw a wider range of two features
    card["observation_stats"] = {"low": low, "high": high}
    wider = load_artifact(save_artifact(actor, tmp_path / "wider", card))
    _, union = derive_residual([default, wider])
    assert union["observation_stats"]["low"] == pytest.approx(low)
    assert union["observation_stats"]["high"] == pytest.approx(high)
    assert low[0] < default.card["observation_stats"]["low"][0]  # the union is not just the first's range


@pytest.mark.parametrize("bad", [{"scale": 0.0}, {"scale": -1.0}, {"scale": float("nan")}, {"prior": "prior@999"}])
def test_bad_input_is_refused(default, bad) -> None:
    with pytest.raises(ValueError):
        derive_residual([default], **bad)


def test_snapshots_of_different_runs_are_not_averaged(default, tmp_path) -> None:
    actor, card = derive_residual([default], prior="prior@15")
    other = load_artifact(save_artifact(actor, tmp_path / "other", card))
    with pytest.raises(ValueError, match="one run"):
        derive_residual([default, other])
    with pytest.raises(ValueError, match="no policies"):
        derive_residual([])
