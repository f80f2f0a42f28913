"""Cold start with Optuna (``chuck.tune``) and the study that many workers share."""

from chuck.tuning.cold_start import TuneError, TuneResult, tune, zoo_instance, zoo_train_fn

__all__ = ["TuneError", "TuneResult", "tune", "zoo_instance", "zoo_train_fn"]
