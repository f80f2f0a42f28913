"""The meta-training checkpoint survives a save cut short: a long run is stopped when its machine or
session ends, at any moment, and the next run resumes from what is on disk. Real SB3 PPO and
VecNormalize on a Gymnasium environment; the cut is a fault injected into the second file's write."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from chuck.core.observation import ObservationSpec
from chuck.metatrain.callbacks import CHECKPOINT_FILES, ResumableCheckpointCallback, TrainingState


@pytest.fixture
def model() -> PPO:
    venv = VecNormalize(DummyVecEnv([lambda: gym.make("CartPole-v1")]), norm_reward=False)
    return PPO("MlpPolicy", venv, n_steps=32, batch_size=32, n_epochs=1, seed=0, device="cpu")


def _state() -> TrainingState:
    n = len(ObservationSpec().names)
    return TrainingState(task_ids=["t"], observation_version=ObservationSpec().version, obs_low=np.zeros(n), obs_high=np.ones(n))


def test_a_save_writes_every_file_and_leaves_no_staging(tmp_path, model) -> None:
    ResumableCheckpointCallback(tmp_path / "checkpoint", _state()).save(model)
    assert sorted(p.name for p in (tmp_path / "checkpoint").iterdir()) == sorted(CHECKPOINT_FILES)
    loaded = PPO.load(str(tmp_path / "checkpoint" / "ppo.zip"), device="cpu")
    assert loaded.num_timesteps == model.num_timesteps


def test_a_save_cut_short_leaves_the_previous_checkpoint_whole(tmp_path, model, monkeypatch) -> None:
    folder = tmp_path / "checkpoint"
    callback = ResumableCheckpointCallback(folder, _state())
    callback.save(model)
    before = {name: (folder / name).read_bytes() for name in CHECKPOINT_FILES}
    model.learn(64)  # the run goes on: the next save differs

    def cut(self, path):  # the process dies while the second file is being written
        with open(path, "wb") as f:
            f.write(b"\x80partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(VecNormalize, "save", cut)
    with pytest.raises(KeyboardInterrupt):
        callback.save(model)
    assert {name: (folder / name).read_bytes() for name in CHECKPOINT_FILES} == before
    assert json.loads((folder / "state.json").read_text())["timesteps"] == 0
    assert PPO.load(str(folder / "ppo.zip"), device="cpu").num_timesteps == 0

    monkeypatch.undo()  # the resumed run saves again over the leftovers of the cut
    callback.save(model)
    assert json.loads((folder / "state.json").read_text())["timesteps"] == model.num_timesteps == 64
    assert not (folder / ".saving").exists()
