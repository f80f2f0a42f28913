"""Meta-training: stable-baselines3 PPO over the zoo, its callbacks and the Ray backend.

from chuck.metatrain import MetaTrainConfig, train_policy

* :mod:`chuck.metatrain.train`: :func:`train_policy`, the run from start to registered policy.
* :mod:`chuck.metatrain.callbacks`: the SB3 callbacks (held-out evaluation, resumable checkpoints,
  observation range, episodes per task, progress) and the MLflow logger output.
* :mod:`chuck.metatrain.heldout`: the held-out evaluation episodes and the learning curve.
* :mod:`chuck.metatrain.card`: the exported policy's card.
* :mod:`chuck.metatrain.comparison`: the final policy against its start and holding, paired on held-out
  instances: the figures ``chuck train-policy`` ends with.
* :mod:`chuck.metatrain.ray_backend`: the environments as Ray actors.
* :class:`MetaTrainConfig` lives in :mod:`chuck.cli.config`, beside the other commands' settings.
"""

from chuck.metatrain.train import MetaTrainConfig, TrainResult, train_policy

__all__ = ["MetaTrainConfig", "TrainResult", "train_policy"]
