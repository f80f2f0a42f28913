"""chuck controlling a stable-baselines3 algorithm's optimizer, which SB3 rewrites every update."""

from __future__ import annotations

import pytest
from stable_baselines3 import PPO

import chuck
from chuck.integrations.sb3 import ChuckSB3Callback


def test_sb3_ppo_under_chuck() -> None:
    model = PPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, n_epochs=2, learning_rate=3e-4, seed=0, device="cpu")
    cb = ChuckSB3Callback("heuristic", return_range=(0.0, 500.0), interval=4)
    model.learn(total_timesteps=640, callback=cb)
    opt = model.policy.optimizer
    assert isinstance(opt, chuck.ChuckOptimizer) and cb.optimizer is opt
    assert opt.step_count == 10 * 2 * 2  # rollouts x epochs x minibatches
    assert len(opt.decisions) >= 5
    assert opt.loss_monitor.history > 0 and opt.stats()["loss.has_val"] == 1.0
    # SB3 wrote its own lr into the group; chuck's effective lr is that times the multiplier
    assert opt.param_groups[0]["lr"] == pytest.approx(3e-4)
    assert opt.hyperparameters["lr"] == pytest.approx(3e-4 * opt.action_spec.lr_mult)
