"""experiments/lab_policies.py: the lab's names for chuck's commands (``--tasks-module experiments.lab_policies``)."""

from __future__ import annotations

import csv

import pytest

import chuck


@pytest.fixture
def lab(monkeypatch):
    from experiments import lab_policies

    monkeypatch.setenv("CHUCK_TASKS_MODULES", "")  # what the command adds is this test's only
    lab_policies.register()
    yield lab_policies
    lab_policies.unregister()


def test_chuck_evaluate_names_a_lab_prior_with_the_tasks_module(lab, tmp_path) -> None:
    from chuck.cli import main

    out = tmp_path / "eval"
    argv = ["evaluate", "--policies", "prior@4", "--baselines", "", "--tasks", "tabular.wine_mlp", "--lrs", "1e-3"]
    argv += ["--seeds", "0", "--budget-scale", "0.05", "--oracle-lrs", "1e-3,1e-2", "--workers", "1", "--no-mlflow"]
    argv += ["--no-progress", "--tasks-module", "experiments.lab_policies", "--out", str(out)]
    assert main(argv) == 0
    with open(out / "rows.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["arm"] == "chuck:prior@4"]
    assert rows and all(not r["error"] for r in rows)


def test_a_residual_on_a_lab_prior_trains_in_the_env(lab) -> None:
    """The meta-environment takes a lab prior by name (``chuck train-policy --prior prior@16``)."""
    from chuck.envs import TrainingControlEnv
    from experiments.prior_variants import PriorVariant

    env = TrainingControlEnv(tasks="tabular.wine_mlp", interval=5, budget_scale=0.1, prior="prior@16")
    try:
        assert isinstance(env.prior, PriorVariant) and env.prior.version == "16"
        env.reset(seed=0)
        env.step(env.action_space.sample())
    finally:
        env.close()


def test_a_derived_artifact_gets_a_name(lab, tmp_path) -> None:
    from experiments.derive_residual import derive_residual, save

    default = chuck.load_policy("default")
    actor, card = derive_residual([default, default], ensemble=True)
    path = save(actor, tmp_path / "pair", card)
    lab.register_artifact("lab:pair", path)
    try:
        policy = chuck.load_policy("lab:pair")
        assert policy.card["architecture"]["members"] == 2
    finally:
        chuck.policies.unregister_policy("lab:pair")


def test_the_environment_names_derived_artifacts_for_the_commands(lab, tmp_path, monkeypatch) -> None:
    from experiments.derive_residual import derive_residual, save

    actor, card = derive_residual([chuck.load_policy("default")], cooldown_cap=True)
    path = save(actor, tmp_path / "capped", card)
    monkeypatch.setenv(lab.ARTIFACTS_ENV, f" lab:capped={path} ,")
    try:
        assert lab.register_from_env() == ["lab:capped"]
        assert chuck.load_policy("lab:capped").card["residual_cooldown_cap"] is True
    finally:
        chuck.policies.unregister_policy("lab:capped")
    monkeypatch.setenv(lab.ARTIFACTS_ENV, "no-path-here")
    with pytest.raises(ValueError, match="is not name=path"):
        lab.register_from_env()
    monkeypatch.setenv(lab.ARTIFACTS_ENV, f"prior@22={path}")
    with pytest.raises(ValueError, match="names a lab prior"):
        lab.register_from_env()
