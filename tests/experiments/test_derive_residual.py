"""Derived residual policies (experiments/derive_residual.py, experiments/residual_variants.py): averaging,
shrinking, moving to another prior, ensembles, gates and caps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import chuck
from chuck.policies.artifact import load_artifact
from experiments.derive_residual import derive_residual
from experiments.derive_residual import save as save_artifact
from experiments.residual_variants import load_variant

#: The observation spec the shipped default reads (its card's), which these derivations start from.
DEFAULT_SPEC = chuck.load_policy("default").observation_version


@pytest.fixture(scope="module")
def default() -> chuck.policies.learned.LearnedPolicy:
    return chuck.load_policy("default")


def _observations(n: int = 32) -> np.ndarray:
    space = chuck.ObservationSpec(DEFAULT_SPEC).space
    space.seed(3)
    return np.stack([space.sample() for _ in range(n)])


def _residual(policy, obs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return policy.actor(torch.as_tensor(obs, dtype=torch.float32)).numpy()


def _save(derived: tuple, where) -> chuck.policies.learned.LearnedPolicy:
    """Save a derive_residual result and load it back as an artifact."""
    actor, card = derived
    return load_variant(save_artifact(actor, where, card))


def _with_path(derived: tuple, where) -> tuple:
    """save_artifact's arguments for a derive_residual result."""
    actor, card = derived
    return actor, where, card


def _perturbed(policy, tmp_path, seed: int):
    """A copy of ``policy`` with other actor weights (a stand-in for another snapshot of its run)."""
    actor, card = derive_residual([policy])
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in actor.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return load_variant(save_artifact(actor, tmp_path / f"snap{seed}", card))


def test_average_of_two_snapshots_is_their_mean(default, tmp_path) -> None:
    a, b = _perturbed(default, tmp_path, 1), _perturbed(default, tmp_path, 2)
    actor, card = derive_residual([a, b], sources=["a", "b"])
    for k, v in actor.state_dict().items():
        torch.testing.assert_close(v, (a.actor.state_dict()[k].double() + b.actor.state_dict()[k].double()).div(2).to(v.dtype))
    assert card["derived"] == {
        "from": ["a", "b"],
        "combined": "average",
        "scale": 1.0,
        "prior": default.card["prior"],
        "progress_gate": None,
        "cooldown_cap": False,
        "plateau_hold": False,
        "masked": [],
    }
    assert "sha256" not in card and "evaluation" not in card  # they described the originals


def test_scale_shrinks_the_residual_and_keeps_the_prior(default, tmp_path) -> None:
    obs = _observations()
    actor, card = derive_residual([default], scale=0.5)
    half = load_variant(save_artifact(actor, tmp_path / "half", card))
    np.testing.assert_allclose(_residual(half, obs), 0.5 * _residual(default, obs), rtol=1e-5, atol=1e-6)
    assert half.card["prior"] == default.card["prior"] and half.id != default.id
    for o in obs[:4]:  # the action is the same prior plus half the correction, clipped
        default.reset(), half.reset()
        prior = default.prior.act(o)
        default.prior.reset()
        np.testing.assert_allclose(half.act(o), np.clip(prior + 0.5 * _residual(default, o[None])[0], -1, 1), atol=1e-6)


def test_moving_to_another_prior(default, tmp_path) -> None:
    actor, card = derive_residual([default], prior="prior@15")
    moved = load_variant(save_artifact(actor, tmp_path / "moved", card))
    assert moved.prior is not None and moved.prior.version == "15" and card["derived"]["prior"] == "prior@15"
    np.testing.assert_allclose(_residual(moved, _observations()), _residual(default, _observations()), atol=0)


def test_observation_ranges_are_united(default, tmp_path) -> None:
    base = default.card["observation_stats"]

    def widened(name: str, feature: int, by: float):
        """A snapshot that saw a wider range of one feature (below for ``by`` < 0, above otherwise)."""
        actor, card = derive_residual([default])
        low, high = list(base["low"]), list(base["high"])
        (low if by < 0 else high)[feature] += by
        card["observation_stats"] = {"low": low, "high": high}
        return load_variant(save_artifact(actor, tmp_path / name, card))

    _, union = derive_residual([widened("a", 0, -1.0), widened("b", 1, 2.0)])
    want_low, want_high = list(base["low"]), list(base["high"])
    want_low[0], want_high[1] = want_low[0] - 1.0, want_high[1] + 2.0
    assert union["observation_stats"]["low"] == pytest.approx(want_low)  # from the first
    assert union["observation_stats"]["high"] == pytest.approx(want_high)  # from the second


def test_a_single_source_keeps_its_observation_statistics_and_specs(default) -> None:
    _, card = derive_residual([default], scale=0.5)
    for key in ("low", "high", "mean", "std"):
        if key in default.card["observation_stats"]:
            assert card["observation_stats"][key] == pytest.approx(default.card["observation_stats"][key])
    assert card["observation"] == default.card["observation"] and card["action"] == default.card["action"]


@pytest.mark.parametrize("bad", [{"scale": 0.0}, {"scale": -1.0}, {"scale": float("nan")}, {"prior": "prior@999"}])
def test_bad_input_is_refused(default, bad) -> None:
    with pytest.raises(ValueError):
        derive_residual([default], **bad)


def test_snapshots_of_different_runs_are_not_averaged(default, tmp_path) -> None:
    actor, card = derive_residual([default], prior="prior@15")
    other = load_variant(save_artifact(actor, tmp_path / "other", card))
    with pytest.raises(ValueError, match="residuals on one prior"):
        derive_residual([default, other])
    with pytest.raises(ValueError, match="no policies"):
        derive_residual([])


def test_ensemble_acts_as_the_mean_of_its_members(default, tmp_path) -> None:
    a, b = _perturbed(default, tmp_path, 1), _perturbed(default, tmp_path, 2)
    actor, card = derive_residual([a, b], ensemble=True, sources=["a", "b"])
    both = load_variant(save_artifact(actor, tmp_path / "ensemble", card))
    assert both.card["architecture"]["members"] == 2 and card["derived"]["combined"] == "ensemble"
    obs = _observations()
    want = (np.clip(_residual(a, obs), -1, 1) + np.clip(_residual(b, obs), -1, 1)) / 2
    np.testing.assert_allclose(_residual(both, obs), want, rtol=1e-5, atol=1e-6)
    for o in obs[:4]:  # the action is the prior's plus the mean of the members' clipped corrections
        both.reset(), a.reset()
        prior = a.prior.act(o)
        a.prior.reset()
        np.testing.assert_allclose(both.act(o), np.clip(prior + want[list(map(tuple, obs)).index(tuple(o))], -1, 1), atol=1e-6)
    # explanations average the members' and still sum to one per dimension
    lr = {k: v for k, v in both.explain(obs[0]).get("lr", {}).items() if not k.startswith("prior: ")}
    assert lr and sum(abs(v) for v in lr.values()) == pytest.approx(1.0)
    # an ensemble of the same network twice is that network
    same, card2 = derive_residual([default, default], ensemble=True)
    np.testing.assert_allclose(
        same(torch.as_tensor(obs, dtype=torch.float32)).detach().numpy(), np.clip(_residual(default, obs), -1, 1), atol=1e-6
    )


def test_an_ensemble_joins_further_members_and_is_never_averaged(default, tmp_path) -> None:
    a, b, c = (_perturbed(default, tmp_path, s) for s in (1, 2, 3))
    pair = _save(derive_residual([a, b], ensemble=True), tmp_path / "pair")
    actor, card = derive_residual([pair, c], ensemble=True)
    assert card["architecture"]["members"] == 3 and len(actor.members) == 3
    with pytest.raises(ValueError, match="do not average"):
        derive_residual([pair, c])
    with pytest.raises(ValueError, match="at least two"):
        derive_residual([a], ensemble=True)


def test_an_ensemble_cannot_be_fine_tuned_and_says_why(default, tmp_path) -> None:
    from chuck.policies.export import actor_to_fine_tune

    pair = _save(derive_residual([default, default], ensemble=True), tmp_path / "pair")
    with pytest.raises(ValueError, match="its actor is a ActorEnsemble"):
        actor_to_fine_tune(pair, "pair")
    with pytest.raises(ValueError, match="built-in rule"):
        actor_to_fine_tune(chuck.load_policy("heuristic"), "heuristic")
    assert actor_to_fine_tune(default, "default") is default.actor


def test_a_card_whose_member_count_does_not_match_the_weights_is_refused(default, tmp_path) -> None:
    actor, card = derive_residual([default, default], ensemble=True)
    out = save_artifact(actor, tmp_path / "pair", card)
    card = json.loads((out / "policy.json").read_text())
    card["architecture"]["members"] = 3
    (out / "policy.json").write_text(json.dumps(card))
    with pytest.raises(chuck.PolicyLoadError, match="x 3 members does not match the weights"):
        load_variant(out)
    card["architecture"]["members"] = 0
    (out / "policy.json").write_text(json.dumps(card))
    with pytest.raises(chuck.PolicyLoadError, match="architecture.members"):
        load_variant(out)


def test_progress_gate_stops_learned_lr_cuts_until_the_loss_has_moved(default, tmp_path) -> None:
    gated = _save(derive_residual([default], progress_gate=0.05), tmp_path / "gated")
    assert gated.card["residual_progress_gate"] == 0.05 and gated.id != default.id
    spec = chuck.ObservationSpec(DEFAULT_SPEC)
    i = spec.names.index("loss.log_ratio_initial")
    cuts = [o for o in _observations(256) if _residual(default, o[None])[0, 0] < -0.05]
    assert cuts, "the shipped residual lowers the lr somewhere in the observation space"
    blocked = 0
    for o in cuts[:8]:
        for ratio, gate_on in ((-0.01, True), (-0.5, False)):
            o = o.copy()
            o[i] = ratio
            default.reset(), gated.reset()
            want = default.act(o)
            default.reset()
            got = gated.act(o)
            if gate_on:  # the learned lr cut is dropped, the prior's action and the other dimensions stay
                if _residual(default, o[None])[0, 0] < 0:
                    blocked += 1  # and the explanation does not credit the actor with a cut that did not happen
                    assert all(k.startswith("prior: ") for k in gated.explain(o).get("lr", {}))
                default.prior.reset()
                assert got[0] == pytest.approx(
                    np.clip(default.prior.act(o)[0] + max(_residual(default, o[None])[0, 0], 0), -1, 1), abs=1e-6
                )
                np.testing.assert_allclose(got[1:], want[1:], atol=1e-6)
            else:
                np.testing.assert_allclose(got, want, atol=1e-6)
    assert blocked, "some learned cut was blocked"
    with pytest.raises(ValueError, match="progress_gate"):
        derive_residual([default], progress_gate=-1.0)


def test_a_bad_progress_gate_in_a_card_is_refused(default, tmp_path) -> None:
    actor, card = derive_residual([default], progress_gate=0.05)
    out = save_artifact(actor, tmp_path / "gated", card)
    raw = json.loads((out / "policy.json").read_text())
    raw["residual_progress_gate"] = -0.05
    (out / "policy.json").write_text(json.dumps(raw))
    with pytest.raises(chuck.PolicyLoadError, match="residual_progress_gate"):
        load_variant(out)


def test_a_progress_gate_is_part_of_the_policys_identity(default, tmp_path) -> None:
    """chuck evaluate resumes an arm only while its name means the same policy: the gate changes the
    actions of the same weights, so it must change the recorded identity (chuck.evaluation.identity)."""
    from chuck.evaluation.identity import policy_identity

    actor, card = derive_residual([default])
    plain = save_artifact(actor, tmp_path / "plain", card)
    actor, card = derive_residual([default], progress_gate=0.05)
    card["version"] = load_artifact(plain).version  # even under the same version string
    gated = save_artifact(actor, tmp_path / "gated", card)
    assert policy_identity(str(plain)) != policy_identity(str(gated))
    assert (
        policy_identity(str(plain)).split(" weights ")[1]
        == policy_identity(str(gated)).split(" weights ")[1].split(" progress")[0]
    )


def test_cooldown_cap_drops_learned_raises_in_the_priors_cooldown_only(default, tmp_path) -> None:
    capped = _save(derive_residual([default], cooldown_cap=True), tmp_path / "capped")
    assert capped.card["residual_cooldown_cap"] is True and capped.card["derived"]["cooldown_cap"] is True
    assert capped.id != default.id
    spec = chuck.ObservationSpec(DEFAULT_SPEC)
    prog, has_total = spec.names.index("ctrl.progress"), spec.names.index("ctrl.has_total")
    capped_raises = 0
    for o in _observations(256):
        for progress in (0.2, 0.9):  # before the prior's cooldown (the last 30% of a known budget), and in it
            o = o.copy()
            o[prog], o[has_total] = progress, 1.0
            default.reset(), capped.reset()
            want, got = default.act(o), capped.act(o)
            assert capped.prior.in_cooldown is (progress > 0.5)
            learned = float(_residual(default, o[None])[0, 0])
            if progress > 0.5 and learned > 0:
                capped_raises += 1
                capped.reset()  # the prior alone on the lr (its state as in the act above); the rest is the residual's
                assert got[0] == pytest.approx(float(np.clip(capped.prior.act(o)[0], -1, 1)), abs=1e-6)
                assert got[0] <= want[0]
                assert all(k.startswith("prior: ") for k in capped.explain(o).get("lr", {}))
                np.testing.assert_allclose(got[1:], want[1:], atol=1e-6)
            else:
                np.testing.assert_allclose(got, want, atol=1e-6)
        if capped_raises >= 8:
            break
    assert capped_raises, "some learned raise in the cooldown was dropped"


def test_a_cooldown_cap_is_part_of_the_policys_identity_and_checked_in_the_card(default, tmp_path) -> None:
    from chuck.evaluation.identity import policy_identity

    actor, card = derive_residual([default])
    plain = save_artifact(actor, tmp_path / "plain", card)
    actor, card = derive_residual([default], cooldown_cap=True)
    capped = save_artifact(actor, tmp_path / "capped", card)
    assert policy_identity(str(plain)) != policy_identity(str(capped))
    raw = json.loads((capped / "policy.json").read_text())
    raw["residual_cooldown_cap"] = "yes"
    (capped / "policy.json").write_text(json.dumps(raw))
    with pytest.raises(chuck.PolicyLoadError, match="residual_cooldown_cap"):
        load_variant(capped)


def test_plateau_hold_drops_learned_cuts_where_its_prior_holds(default, tmp_path) -> None:
    from chuck.evaluation.identity import policy_identity
    from experiments import lab_policies

    lab_policies.register()  # prior@22 is a lab version
    held = _save(derive_residual([default], prior="prior@22", plateau_hold=True), tmp_path / "held")
    plain = _save(derive_residual([default], prior="prior@22"), tmp_path / "plain")
    assert held.card["residual_plateau_hold"] is True and held.card["derived"]["plateau_hold"] is True
    assert "plateau hold" in policy_identity(str(tmp_path / "held"))
    spec = chuck.ObservationSpec(DEFAULT_SPEC)
    # a steady plateau with a cosine in the band, and nothing else the prior acts on (no instability, no
    # validation, no known budget): the prior holds at 0
    steady = {"loss.log_ratio_initial": 0.0, "grad.norm_cv": 0.1, "step.hypergrad": 0.0, "ctrl.skip_rate": 0.0}
    steady |= {"loss.log_slope": 0.0, "loss.has_val": 0.0, "ctrl.has_total": 0.0}
    dropped = 0
    for o in _observations(256):
        for name, value in steady.items():
            o[spec.names.index(name)] = value
        held.reset(), plain.reset()
        got, want = held.act(o), plain.act(o)
        assert held.prior.holds_plateau
        if float(_residual(default, o[None])[0, 0]) < 0:
            dropped += 1
            assert got[0] == 0.0 > want[0]  # the prior's hold, without the learned cut
            assert all(k.startswith("prior: ") for k in held.explain(o).get("lr", {}))
            np.testing.assert_allclose(got[1:], want[1:], atol=1e-6)
        else:
            np.testing.assert_allclose(got, want, atol=1e-6)
    assert dropped, "some learned cut on the plateau was dropped"


def test_a_masked_feature_is_read_at_its_training_mean(default, tmp_path) -> None:
    from chuck.evaluation.identity import policy_identity

    name = "ctrl.log_lr_mult"
    i = chuck.ObservationSpec(DEFAULT_SPEC).names.index(name)
    masked_dir = save_artifact(*_with_path(derive_residual([default], mask=[name]), tmp_path / "masked"))
    masked = load_artifact(masked_dir)  # an ordinary artifact: chuck loads it
    assert masked.card["derived"]["masked"] == [name] and name in masked.id
    plain_dir = save_artifact(*_with_path(derive_residual([default]), tmp_path / "plain"))
    assert policy_identity(str(masked_dir)) != policy_identity(str(plain_dir))
    obs = _observations(64)
    at_mean = obs.copy()
    at_mean[:, i] = default.actor.obs_mean[i].item()
    anywhere = obs.copy()
    anywhere[:, i] = np.random.default_rng(0).uniform(-7.0, 5.0, len(obs))  # the feature's whole range
    np.testing.assert_allclose(_residual(masked, obs), _residual(default, at_mean), atol=1e-6)
    np.testing.assert_array_equal(_residual(masked, anywhere), _residual(masked, obs))
    assert np.abs(_residual(default, anywhere) - _residual(default, obs)).max() > 0.01  # it mattered before
    for o in obs[:4]:
        masked.reset()
        assert all(name not in reasons for reasons in masked.explain(o).values())


def test_masking_an_unknown_feature_is_refused(default) -> None:
    with pytest.raises(ValueError, match="not features of observation spec"):
        derive_residual([default], mask=["ctrl.no_such_feature"])


@pytest.mark.parametrize(
    ("derive", "field"),
    [
        ({"ensemble": True}, "architecture.members"),
        ({"progress_gate": 0.05}, "residual_progress_gate"),
        ({"cooldown_cap": True}, "residual_cooldown_cap"),
        ({"plateau_hold": True, "prior": "prior@22"}, "residual_plateau_hold"),
    ],
)
def test_chuck_refuses_what_it_does_not_implement_and_says_where_it_loads(default, tmp_path, derive, field) -> None:
    """A derived feature chuck does not ship is refused by its loader, never run without it."""
    out = save_artifact(
        *_with_path(derive_residual([default, default] if "ensemble" in derive else [default], **derive), tmp_path / "d")
    )
    with pytest.raises(chuck.PolicyLoadError, match=f"{field}.*experiments/residual_variants.py"):
        load_artifact(out)
    assert load_variant(out).version == json.loads((out / "policy.json").read_text())["version"]
    plain = save_artifact(*_with_path(derive_residual([default]), tmp_path / "plain"))
    assert type(load_variant(plain)) is type(load_artifact(plain)), "an ordinary artifact loads as chuck loads it"


def test_a_plateau_hold_on_a_prior_that_never_holds_is_refused(default, tmp_path) -> None:
    from experiments import lab_policies

    lab_policies.register()
    with pytest.raises(ValueError, match="plateau_hold needs a prior that holds a steady plateau"):
        derive_residual([default], plateau_hold=True)  # the default's own prior@10
    actor, card = derive_residual([default], prior="prior@22", plateau_hold=True)
    out = save_artifact(actor, tmp_path / "held", card)
    raw = json.loads((out / "policy.json").read_text())
    raw["prior"] = "prior@20"  # holds the cosine's cuts, but never tells a residual
    (out / "policy.json").write_text(json.dumps(raw))
    with pytest.raises(chuck.PolicyLoadError, match="residual_plateau_hold needs a prior"):
        load_variant(out)


def test_a_registered_derived_artifact_is_named_by_its_card_in_the_arms_manifest(default, tmp_path) -> None:
    from chuck.evaluation.identity import policy_identity
    from experiments import lab_policies

    lab_policies.register()
    held = save_artifact(*_with_path(derive_residual([default], prior="prior@22", plateau_hold=True), tmp_path / "held"))
    plain = save_artifact(*_with_path(derive_residual([default], prior="prior@22"), tmp_path / "plain"))
    try:
        lab_policies.register_artifact("lab:held", held)
        first = policy_identity("lab:held")
        assert first.startswith("lab:held: ") and first.endswith("prior prior@22 plateau hold")
        lab_policies.register_artifact("lab:held", plain)  # the same name, pointed at another artifact
        assert policy_identity("lab:held") != first
    finally:
        chuck.policies.unregister_policy("lab:held")
    assert policy_identity("prior@22") == "prior@22"  # a lab rule has no card: its name
