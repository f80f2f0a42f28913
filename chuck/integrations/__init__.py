"""Drop-in use of chuck where people already train. Each module imports its framework lazily.

* :mod:`chuck.integrations.lightning`: ``ChuckCallback`` for PyTorch Lightning.
* :mod:`chuck.integrations.transformers`: ``ChuckTrainer``, a Hugging Face ``Trainer`` subclass.
* :mod:`chuck.integrations.sb3`: ``ChuckSB3Callback`` for stable-baselines3 algorithms.
"""
