"""Meta-training: stable-baselines3 PPO over the zoo, its callbacks and the Ray backend.

from chuck.metatrain import MetaTrainConfig, train_policy
"""

from chuck.metatrain.train import MetaTrainConfig, TrainResult, train_policy

__all__ = ["MetaTrainConfig", "TrainResult", "train_policy"]
