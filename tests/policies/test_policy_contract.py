"""The Policy contract, run against every policy chuck ships."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

import chuck
from chuck.actions import ActionSpec
from chuck.observation import ObservationSpec

POLICIES = ["constant", "heuristic", "default"]


@pytest.mark.parametrize("name", POLICIES)
def test_policy_contract(name: str) -> None:
    policy = chuck.load_policy(name)
    assert isinstance(policy, chuck.Policy)
    spec = ObservationSpec()
    assert policy.observation_version == spec.version
    assert policy.action_version == ActionSpec.version
    assert policy.id == f"{policy.name}@{policy.version}"
    space = spec.space
    space.seed(0)
    for _ in range(100):
        a = np.asarray(policy.act(space.sample()))
        assert a.shape == (len(ActionSpec.dims),)
        assert np.all(np.isfinite(a)) and np.all(np.abs(a) <= 1.0)
    buf = io.BytesIO()
    torch.save(policy.state_dict(), buf)
    buf.seek(0)
    policy.load_state_dict(torch.load(buf, weights_only=True))
    meta = policy.metadata()
    assert meta["name"] == policy.name and meta["observation_version"] == spec.version


def test_heuristic_reacts_to_instability_and_overfitting() -> None:
    spec = ObservationSpec()
    pol = chuck.load_policy("heuristic")
    base = spec.encode({})
    names = spec.names
    spike = base.copy()
    spike[names.index("loss.spike")] = 3.0
    assert pol.act(spike)[0] == -1.0  # halve the lr
    assert pol.act(spike)[2] == -1.0  # tighten clipping
    over = base.copy()
    for k, v in {"loss.has_val": 1.0, "loss.overfit_gl": 0.2, "loss.val_trend": 0.1}.items():
        over[names.index(k)] = v
    a = pol.act(over)
    assert a[1] > 0 and a[3] > 0
    plateau = base.copy()
    plateau[names.index("loss.plateau")] = 2.0
    pol.reset()
    assert pol.act(plateau)[0] == 1.0  # warm restart
    assert pol.act(plateau)[0] == 0.0  # then a cooldown


def test_default_policy_is_bundled_and_learned() -> None:
    policy = chuck.load_policy("default")
    card = policy.card
    assert card["training"]["tasks"] == "train" and card["training"]["timesteps"] >= 10_000
    assert card["evaluation"]["heldout_return"] > card["evaluation"]["constant_return"]
    assert policy.interval == 20 and policy.obs_low is not None
