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
    assert opt.total_steps == opt.step_count  # the callback planned the budget the default cools down on
    assert len(opt.decisions) >= 5
    assert opt.loss_monitor.history > 0 and opt.stats()["loss.has_val"] == 1.0
    # SB3 wrote its own lr into the group; chuck's effective lr is that times the multiplier
    assert opt.param_groups[0]["lr"] == pytest.approx(3e-4)
    assert opt.hyperparameters["lr"] == pytest.approx(3e-4 * opt.action_spec.lr_mult)


def test_sb3_actor_critic_algorithms_get_both_optimizers_wrapped() -> None:
    """SAC and TD3 keep no policy.optimizer: the actor's and the critic's are wrapped, each with its own network
    (the callback raised AttributeError at training start before)."""
    from stable_baselines3 import SAC, TD3

    for algo in (SAC, TD3):
        model = algo("MlpPolicy", "Pendulum-v1", learning_starts=50, batch_size=32, seed=0, device="cpu")
        cb = ChuckSB3Callback("heuristic", return_range=(-1700.0, 0.0), interval=4, history=False)
        model.learn(total_timesteps=250, callback=cb)
        actor, critic = model.policy.actor.optimizer, model.policy.critic.optimizer
        assert cb.optimizers == [actor, critic] and cb.optimizer is actor
        assert all(isinstance(o, chuck.ChuckOptimizer) for o in (actor, critic)) and actor is not critic
        assert actor.model is model.policy.actor and critic.model is model.policy.critic
        assert critic.step_count == 200 and 0 < actor.step_count <= 200  # TD3 updates its actor every other step
        assert len(critic.decisions) >= 5 and critic.stats()["loss.has_val"] == 1.0


def test_sb3_a2c_budget_and_a_continued_learn_count_from_where_the_model_stands() -> None:
    from stable_baselines3 import A2C

    model = A2C("MlpPolicy", "CartPole-v1", n_steps=8, seed=0, device="cpu")
    cb = ChuckSB3Callback("heuristic", interval=4, history=False)
    model.learn(total_timesteps=160, callback=cb)
    first = cb.optimizer
    assert first is not None and first.total_steps == first.step_count == 20 and first.closed
    again = ChuckSB3Callback("heuristic", interval=4, history=False)  # a continued run: a new one for chuck
    model.learn(total_timesteps=80, callback=again, reset_num_timesteps=False)
    assert again.optimizer is not None and again.optimizer is not first and again.optimizer.optimizer is first.optimizer
    assert again.optimizer.total_steps == again.optimizer.step_count == 10
    explicit = ChuckSB3Callback("heuristic", interval=4, history=False, total_steps=500)  # the user's own wins
    model.learn(total_timesteps=16, callback=explicit, reset_num_timesteps=False)
    assert explicit.optimizer is not None and explicit.optimizer.total_steps == 500
