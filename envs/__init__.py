"""Gymnasium meta-environment: one episode is one real training run of a zoo task.

Importing this module registers ``"chuck/TrainingControl-v0"``::

    import gymnasium as gym
    import chuck.envs
    env = gym.make("chuck/TrainingControl-v0", tasks="train", interval=20)
"""

from gymnasium.envs.registration import register, registry

from chuck.envs.training_env import TrainingControlEnv

ENV_ID = "chuck/TrainingControl-v0"

if ENV_ID not in registry:
    # No TimeLimit/order-enforcing surprises: the task budget ends the episode.
    register(id=ENV_ID, entry_point="chuck.envs.training_env:TrainingControlEnv", disable_env_checker=False)

__all__ = ["ENV_ID", "TrainingControlEnv"]
