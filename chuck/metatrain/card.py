"""The card of a meta-trained policy: the ``policy.json`` beside its weights.

A card says what deployment needs to use the policy as it was trained (the decision interval,
the prior under the residual, the observation statistics behind the normalization and the
out-of-distribution check) and what it was trained on, read from the run rather than inferred
from the spec: the resolved tasks with each one's episodes and mean return, the timesteps, the
PPO settings, the MLflow run, the latest held-out evaluation and, at the end of a run, the final
policy against its start and the constant policy, paired on the held-out instances
(``comparison``: :func:`chuck.metatrain.comparison.compare_arms`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from stable_baselines3.common.running_mean_std import RunningMeanStd

from chuck.cli.config import MetaTrainConfig
from chuck.core.observation import ObservationSpec
from chuck.metatrain.callbacks import TrainingState

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm

    pass


def build_card(
    cfg: MetaTrainConfig, state: TrainingState, model: BaseAlgorithm, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The card of the policy ``model`` exports now, in run ``state.run_id`` of ``cfg``.

    Its evaluation is the latest in ``state`` (``{}`` before the first). An observation never seen
    in training keeps the observation space's own bounds as its range (a fine-tuning run's state
    starts from its starting policy's ranges, so the exported range contains them). ``extra`` goes
    into the ``training`` section (the episode weights and held-out seeds the run used).
    """
    assert state.run_id is not None, "a card names its MLflow run: start the run first"
    venv = model.get_vec_normalize_env()
    assert venv is not None, "meta-training normalizes observations with VecNormalize"
    rms = venv.obs_rms
    assert isinstance(rms, RunningMeanStd)  # one, not a dict of them: the observation is a Box
    timesteps = int(model.num_timesteps)
    spec = ObservationSpec(cfg.observation_version)
    finite = np.isfinite(state.obs_low) & np.isfinite(state.obs_high)
    return {
        "name": cfg.name,
        "observation": spec.card(),
        "version": f"{state.run_id[:8]}-{timesteps}",
        "interval": cfg.interval,
        "prior": cfg.prior,
        "observation_stats": {
            "low": np.where(finite, state.obs_low, spec.low).tolist(),
            "high": np.where(finite, state.obs_high, spec.high).tolist(),
            "mean": np.asarray(rms.mean).tolist(),
            "std": np.sqrt(np.asarray(rms.var)).tolist(),
        },
        "training": {
            "tasks": cfg.tasks,
            "resolved_tasks": state.task_ids,
            "tasks_module": list(cfg.tasks_module),
            "task_weights": dict(cfg.task_weights),
            "episodes_per_task": state.episodes_per_task(),
            "eval_tasks": cfg.eval_tasks,
            "timesteps": timesteps,
            "seed": cfg.seed,
            "mlflow_run_id": state.run_id,
            "ppo": cfg.ppo,
            "interval": cfg.interval,
            "budget_scale": cfg.budget_scale,
            "init_policy": cfg.init_policy,
            "zoo_share": cfg.zoo_share,
            **(extra or {}),
        },
        "evaluation": state.evaluations[-1] if state.evaluations else {},
        **({"comparison": state.comparison} if state.comparison else {}),
    }
