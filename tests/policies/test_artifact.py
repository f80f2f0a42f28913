"""Policy artifacts: export parity with SB3, and clear errors for corrupt or mismatched files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

import chuck
from chuck.envs import TrainingControlEnv
from chuck.policies.artifact import load_artifact
from chuck.policies.export import export_sb3


@pytest.fixture(scope="module")
def sb3_and_artifact(tmp_path_factory):
    venv = VecNormalize(
        DummyVecEnv([lambda: TrainingControlEnv(tasks="tabular.wine_mlp", interval=4, budget_scale=0.05)]),
        norm_obs=True,
        norm_reward=False,
        clip_obs=10.0,
    )
    model = PPO(
        "MlpPolicy",
        venv,
        seed=0,
        device="cpu",
        n_steps=16,
        batch_size=16,
        n_epochs=1,
        policy_kwargs={"net_arch": {"pi": [32, 32], "vf": [32, 32]}},
    )
    model.learn(32)  # a few updates: weights and normalization statistics are no longer at init
    rng = np.random.default_rng(0)
    venv.obs_rms.mean = rng.normal(0, 1, venv.observation_space.shape)  # make normalization matter
    venv.obs_rms.var = rng.uniform(0.1, 5, venv.observation_space.shape)
    out = tmp_path_factory.mktemp("artifact")
    export_sb3(model, venv, out, {"name": "parity", "version": "1", "interval": 4})
    return model, venv, out


def test_export_parity(sb3_and_artifact) -> None:
    model, venv, out = sb3_and_artifact
    policy = load_artifact(out)
    space = chuck.ObservationSpec().space
    space.seed(1)
    obs = np.stack([space.sample() for _ in range(64)])
    sb3_actions, _ = model.predict(venv.normalize_obs(obs), deterministic=True)
    ours = np.stack([policy.act(o) for o in obs])
    np.testing.assert_allclose(ours, sb3_actions, rtol=1e-5, atol=1e-6)
    assert policy.interval == 4 and policy.id == "parity@1"
    assert (np.abs(ours) <= 1).all()


def test_explain_attributes_to_named_features(sb3_and_artifact) -> None:
    _, _, out = sb3_and_artifact
    policy = load_artifact(out)
    attr = policy.explain(chuck.ObservationSpec().space.sample())
    assert set(attr) == set(chuck.ActionSpec.dims), "one attribution per action dimension"
    for per_dim in attr.values():
        assert set(per_dim) <= set(chuck.ObservationSpec().names)
        assert abs(sum(abs(v) for v in per_dim.values()) - 1.0) < 1e-5


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "a"
    shutil.copytree(src, dst)
    return dst


def test_truncated_weights(sb3_and_artifact, tmp_path) -> None:
    a = _copy(sb3_and_artifact[2], tmp_path)
    data = (a / "policy.pt").read_bytes()
    (a / "policy.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(chuck.PolicyLoadError, match="checksum mismatch"):
        chuck.load_policy(str(a))


def test_corrupt_card(sb3_and_artifact, tmp_path) -> None:
    a = _copy(sb3_and_artifact[2], tmp_path)
    (a / "policy.json").write_text("{not json")
    with pytest.raises(chuck.PolicyLoadError, match="not valid JSON"):
        chuck.load_policy(str(a))


def test_missing_file(sb3_and_artifact, tmp_path) -> None:
    a = _copy(sb3_and_artifact[2], tmp_path)
    (a / "policy.pt").unlink()
    with pytest.raises(chuck.PolicyLoadError, match="missing policy.pt"):
        chuck.load_policy(str(a))


@pytest.mark.parametrize(
    "section,key,value,needle",
    [
        ("observation", "version", "999", "observation spec"),
        ("action", "dims", ["lr", "momentum"], "action spec"),
        (None, "format_version", 99, "format_version"),
        (None, "format", "something-else", "not a chuck policy"),
        ("architecture", "hidden", [8], "do not match the card"),
    ],
)
def test_mismatched_card(sb3_and_artifact, tmp_path, section, key, value, needle) -> None:
    a = _copy(sb3_and_artifact[2], tmp_path)
    card = json.loads((a / "policy.json").read_text())
    (card[section] if section else card)[key] = value
    (a / "policy.json").write_text(json.dumps(card))
    with pytest.raises(chuck.PolicyLoadError, match=needle):
        chuck.load_policy(str(a))


def test_pickle_payload_is_refused(sb3_and_artifact, tmp_path) -> None:
    """A weights file carrying arbitrary objects (with a matching checksum) does not load."""
    import hashlib

    a = _copy(sb3_and_artifact[2], tmp_path)
    torch.save({"payload": object()}, a / "policy.pt")
    card = json.loads((a / "policy.json").read_text())
    card["sha256"] = hashlib.sha256((a / "policy.pt").read_bytes()).hexdigest()
    (a / "policy.json").write_text(json.dumps(card))
    with pytest.raises(chuck.PolicyLoadError, match="cannot read policy.pt"):
        chuck.load_policy(str(a))


def test_unknown_name() -> None:
    with pytest.raises(chuck.PolicyLoadError, match="unknown policy"):
        chuck.load_policy("definitely-not-a-policy")


class _PathLike:
    def __fspath__(self) -> str:
        return "missing-policy-dir"


@pytest.mark.parametrize("spec", ["runs/missing-policy", "./missing", "~/missing-policy", Path("missing"), _PathLike()])
def test_a_missing_path_is_named_as_a_path(spec, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(chuck.PolicyLoadError, match="no policy directory at .*missing.*: nothing exists there"):
        chuck.load_policy(spec)


def test_loading_a_learned_policy_leaves_the_global_rng_where_it_was() -> None:
    """Building the actor draws a random initialization (then overwritten): drawn from the caller's global
    RNG, wrapping an optimizer in the default policy changed which batches and dropout masks the run saw."""
    torch.manual_seed(0)
    expected = torch.rand(3)
    params = torch.nn.Linear(2, 1).parameters()
    for load in (
        lambda: chuck.load_policy("default"),
        lambda: chuck.ChuckOptimizer(torch.optim.SGD(params, lr=0.1), "default", history=False),
    ):
        torch.manual_seed(0)
        load()
        assert torch.equal(torch.rand(3), expected)


def test_an_actor_of_another_spec_is_not_saved_under_the_newest(tmp_path) -> None:
    """A card that names no observation spec gets the newest; an actor that reads another number of features
    is refused before anything is written, rather than saved as an artifact that cannot load."""
    from chuck.policies.artifact import save_artifact
    from chuck.policies.learned import ActorNetwork

    card = {"name": "t", "version": "1", "interval": 10, "architecture": {"hidden": [4], "activation": "tanh"}}
    newest = chuck.ObservationSpec()
    with pytest.raises(ValueError, match=f"reads {len(newest.names) + 3} features"):
        save_artifact(ActorNetwork(len(newest.names) + 3, 4, [4]), tmp_path / "wrong", card)
    assert not (tmp_path / "wrong").exists()
    two = chuck.ObservationSpec("2")
    saved = save_artifact(ActorNetwork(len(two.names), 4, [4]), tmp_path / "v2", {**card, "observation": two.card()})
    assert load_artifact(saved).observation_version == "2"
    assert (
        load_artifact(save_artifact(ActorNetwork(len(newest.names), 4, [4]), tmp_path / "new", card)).observation_version
        == newest.version
    )
