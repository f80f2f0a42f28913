"""A tiny-budget meta-training end to end: PPO, MLflow (temporary SQLite store), export, registry."""

from __future__ import annotations

import numpy as np
import pytest

import chuck
from chuck.metatrain import MetaTrainConfig, train_policy


@pytest.mark.slow
def test_tiny_meta_training_end_to_end(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CHUCK_HOME", str(tmp_path / "home"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = MetaTrainConfig(
        tasks="tabular.breast_cancer_mlp,tabular.diabetes_regression",
        eval_tasks="tabular.wine_mlp",
        timesteps=256,
        n_envs=2,
        interval=5,
        budget_scale=0.2,
        output=str(tmp_path / "run"),
        eval_every=128,
        eval_episodes=2,
        checkpoint_every=64,
        tracking_uri=uri,
        progress=False,
        name="tiny",
        alias="test",
        ppo={"n_steps": 32, "batch_size": 32, "n_epochs": 2},
    )
    result = train_policy(cfg)
    policy = chuck.load_policy(str(result.artifact_dir))
    assert policy.interval == 5 and policy.card["training"]["timesteps"] >= 256
    assert np.isfinite(policy.act(chuck.ObservationSpec().space.sample())).all()
    assert [e["timesteps"] for e in result.evaluations][-1] >= 256 and len(result.evaluations) >= 2
    assert policy.card["prior"] == "prior@1", "a residual on the built-in prior, as configured by default"
    assert len(list((tmp_path / "run" / "snapshots").iterdir())) >= 2, "every evaluated policy is kept for selection"

    import mlflow

    mlflow.set_tracking_uri(uri)
    run = mlflow.MlflowClient().get_run(result.run_id)
    assert run.data.params["timesteps"] == "256"
    assert "eval.heldout_return" in run.data.metrics and "train.value_loss" in run.data.metrics
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(result.run_id)}
    assert {"policy", "evaluation"} <= arts
    registered = chuck.load_policy("models:/tiny@test")
    obs = chuck.ObservationSpec().space.sample()
    np.testing.assert_array_equal(registered.act(obs), policy.act(obs))

    # rerunning with a larger budget resumes from the checkpoint, in the same MLflow run
    cfg.timesteps = 320
    again = train_policy(cfg)
    assert again.run_id == result.run_id
    assert chuck.load_policy(str(again.artifact_dir)).card["training"]["timesteps"] >= 320
