"""The Policy contract, run against every policy chuck ships."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import chuck
from chuck.core.actions import ActionSpec
from chuck.core.observation import ObservationSpec
from chuck.policies.prior import CONFIGS
from chuck.testing import check_policy

#: Every built-in, every shipped version of the prior included (the lab's versions keep the contract in
#: tests/experiments/test_prior_variants.py).
POLICIES = ["constant", "heuristic", "prior", *(f"prior@{v}" for v in CONFIGS), "default"]


@pytest.mark.parametrize("name", POLICIES)
def test_policy_contract(name: str) -> None:
    check_policy(chuck.load_policy(name))


class _OutOfRange(chuck.Policy):
    """A policy that breaks the contract: its actions leave [-1, 1]."""

    name = "out_of_range"
    version = "0"

    def act(self, observation: np.ndarray) -> np.ndarray:
        self.check_observation(observation)
        return np.full(len(ActionSpec.dims), 2.0, dtype=np.float32)


def test_check_policy_names_a_broken_rule() -> None:
    with pytest.raises(AssertionError, match="outside"):
        check_policy(_OutOfRange())


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


def test_default_policy_is_bundled_and_its_card_says_what_it_is() -> None:
    policy = chuck.load_policy("default")
    card = policy.card
    from chuck.policies.card import KNOWN_PRIORS
    from chuck.policies.residual import make_prior

    assert card["training"]["tasks"] == "train" and card["prior"] in KNOWN_PRIORS
    assert card["splits"] == {"trained_on": "train", "chose_design_and_checkpoint": "validation", "reported_on": "test"}
    assert policy.interval == 20 and policy.observation_version == policy.card["observation"]["version"]
    validation = card["evaluation"]["validation"]
    assert {f"chuck:{card['prior']}", "adamw", "prodigy"} <= set(validation), "the prior it ships was compared on validation"
    if card.get("residual", {}).get("state") == "zero":
        # shipped as the prior until a PPO snapshot beats it on validation: it must act exactly so
        prior = make_prior(card["prior"], policy.observation_version)
        assert prior is not None
        space = chuck.ObservationSpec(policy.observation_version).space
        space.seed(1)
        for _ in range(50):
            obs = space.sample()
            np.testing.assert_allclose(policy.act(obs), prior.act(obs), atol=1e-7)
        assert card["residual"]["why"]
    else:
        # a trained residual ships as the snapshot that won on validation, and acts exactly as it
        assert card["residual"]["state"] == "learned" and card["residual"]["why"]
        snapshot = card["residual"]["snapshot"]
        assert f"chuck:{snapshot}" in validation, "the snapshot it ships was compared on validation"
        where = Path(__file__).resolve().parents[2] / snapshot
        if not where.exists():  # training runs live in git history (docs/results/MANIFEST.md), not in the tree
            pytest.skip(f"the training snapshot {snapshot} is not checked out (git history keeps it)")
        trained = chuck.load_policy(str(where))
        space = chuck.ObservationSpec(policy.observation_version).space
        space.seed(1)
        for _ in range(50):
            obs = space.sample()
            np.testing.assert_allclose(policy.act(obs), trained.act(obs), atol=1e-7)


def test_prior_follows_the_hypergradient() -> None:
    from chuck.policies.prior import LOWER_AT, RAISE_AT

    spec = ObservationSpec()
    pol = chuck.load_policy("prior")
    names = spec.names

    def lr_action(**features: float) -> float:
        obs = spec.encode({})
        for k, v in features.items():
            obs[names.index(k)] = v
        return float(pol.act(obs)[0])

    assert lr_action(**{"step.hypergrad": 0.3}) == 1.0  # far too low: the full x3 step
    assert lr_action(**{"step.hypergrad": (RAISE_AT + LOWER_AT) / 2}) == 0.0  # a tuned run is left alone
    assert lr_action(**{"step.hypergrad": -0.1}) < 0  # overshooting
    assert lr_action(**{"step.hypergrad": 0.3, "ctrl.skip_rate": 0.2}) == -1.0  # instability wins
    assert lr_action(**{"loss.spike": 1.5}) == 0.0  # one noisy minibatch is no instability
    assert lr_action(**{"step.log10_update_over_dhat": 3.0}) == 0.0  # the distance bound is the residual's to use
    obs = spec.encode({"step.hypergrad": 0.3})
    assert pol.act(obs)[1:].tolist() == [0.0, 0.0, 0.0], "the prior drives the lr only"
    assert pol.explain(obs) == {"lr": {"step.hypergrad": 1.0}}
