"""A tiny-budget meta-training end to end: PPO, MLflow (temporary SQLite store), export, registry."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import chuck
from chuck.metatrain.train import MetaTrainConfig, train_policy
from chuck.policies.prior import LATEST


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
    assert policy.card["prior"] == f"prior@{LATEST}", "a residual on the latest built-in prior, as configured by default"
    assert MetaTrainConfig().prior == f"prior@{LATEST}", "the default prior follows the latest version"
    assert [e["timesteps"] for e in result.evaluations] == [128, 256], "no starting policy: no point at 0"
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

    # rerunning a finished run (to register it after a crash) trains and evaluates nothing more, and does not
    # register the same policy again under the same name (a new alias does)
    assert again.registered_now and again.model_version != result.model_version
    done = train_policy(cfg)
    assert done.evaluations == again.evaluations
    assert len({e["timesteps"] for e in done.evaluations}) == len(done.evaluations), "no evaluation twice"
    assert not done.registered_now and done.model_version == again.model_version
    assert not done.trained_now and again.trained_now and done.timesteps == again.timesteps >= 320
    assert len(mlflow.MlflowClient().search_model_versions("name='tiny'")) == 2
    cfg.alias = "other"
    relabelled = train_policy(cfg)
    assert relabelled.registered_now and chuck.load_policy("models:/tiny@other").id == chuck.load_policy("models:/tiny@test").id


def _train_policy_cli(tmp_path, *args: str) -> list[str]:
    """``chuck train-policy`` arguments of a run that must stop before training: output and store under tmp_path."""
    return [
        "train-policy",
        *args,
        "--output",
        str(tmp_path / "run"),
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'm.db'}",
        "--no-progress",
    ]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--tasks", "custom,train"], "split 'custom' holds no task in this process: register them"),
        (["--tasks", "train,domain:audio"], "domain 'audio' holds no task"),
        (["--tasks", "train,cv.no_such_task"], "no task 'cv.no_such_task'"),
        (["--tasks-module", "no_such_tasks_module"], "no tasks module 'no_such_tasks_module'"),
        (["--tasks", "train", "--task-weights", "tabular.wine_mlp=3"], "not being trained on: ['tabular.wine_mlp']"),
        (["--tasks", "train", "--task-weights", "cv.digits_mlp=-1"], "must be a positive finite number"),
        (["--tasks", "train", "--task-weights", "cv.digits_mlp=inf"], "must be a positive finite number"),
        # budgets and counts: 0 timesteps used to export and register an untrained policy, 0 environments
        # raised an IndexError, interval 1 killed the environment processes, a negative eval_every trained on
        (["--timesteps", "0"], "timesteps must be a whole number >= 1"),
        (["--n-envs", "0"], "n_envs must be a whole number >= 1"),
        (["--interval", "1"], "interval must be >= 2"),
        (["--eval-every", "-5"], "eval_every must be >= 0"),
        (["--eval-episodes", "0"], "eval_episodes must be a whole number >= 1"),
        (["--checkpoint-every", "0"], "checkpoint_every must be a whole number >= 1"),
        (["--budget-scale", "0"], "budget_scale must be a positive number"),
        (["--net-arch", "[64, 0]"], "net_arch must be a list of layer widths >= 1"),
    ],
)
def test_cli_refuses_a_bad_task_spec_or_setting_before_anything_starts(tmp_path, capsys, monkeypatch, args, needle) -> None:
    """A named split that selects nothing used to train on the rest without a word."""
    from chuck.cli.main import main
    from chuck.zoo import registry

    monkeypatch.setenv(registry.MODULES_ENV, "")
    monkeypatch.setattr(sys, "path", list(sys.path))  # a module lookup may add the working directory
    monkeypatch.chdir(tmp_path)
    assert main(_train_policy_cli(tmp_path, *args)) == 2
    err = capsys.readouterr().err
    assert err.startswith("chuck train-policy: error: ") and needle in err, err
    if "holds no task" in needle:
        assert "--tasks-module MODULE" in err, "the message says what to do"
    assert not (tmp_path / "run").exists() and not (tmp_path / "m.db").exists(), "nothing was started"


def test_cli_rejects_malformed_task_weights(tmp_path, capsys) -> None:
    from chuck.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(_train_policy_cli(tmp_path, "--task-weights", "cv.digits_mlp:3"))
    assert exc.value.code == 2 and "'cv.digits_mlp:3' is not ID=WEIGHT" in capsys.readouterr().err


def test_task_weights_and_modules_parse_from_flags_and_config() -> None:
    from chuck.metatrain.train import parse_task_weights

    assert parse_task_weights("inhouse.a=5, cv.digits_mlp=0.5,") == {"inhouse.a": 5.0, "cv.digits_mlp": 0.5}
    assert parse_task_weights("") == {}
    cfg = MetaTrainConfig(task_weights="inhouse.a=5", tasks_module="a.tasks, b.tasks")  # type: ignore[arg-type]
    assert cfg.task_weights == {"inhouse.a": 5.0} and cfg.tasks_module == ["a.tasks", "b.tasks"]
    with pytest.raises(ValueError, match="positive finite"):
        MetaTrainConfig(task_weights={"inhouse.a": float("nan")})


def test_eval_every_default_scales_with_the_budget_and_is_documented(capsys) -> None:
    """A fixed default gave a short run's learning curve a single point; the default plans min(5, PPO updates)
    evaluations over the run, each between two updates."""
    from chuck.cli.main import main

    assert MetaTrainConfig(timesteps=40_000).eval_every is None, "None: the planned default"
    assert len(MetaTrainConfig(timesteps=40_000).evaluation_timesteps()) == 5
    assert MetaTrainConfig(timesteps=3_000).evaluation_timesteps() == [512, 1024, 2048, 2560, 3072]
    # never more often than PPO updates the policy (n_steps x n_envs): the same policy evaluated twice
    assert MetaTrainConfig(timesteps=3_000, n_envs=8).evaluation_timesteps() == [2048, 4096]
    assert MetaTrainConfig(timesteps=3_000, eval_every=0).evaluation_timesteps() == [3072]
    with pytest.raises(SystemExit):
        main(["train-policy", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert (
        "--eval-every EVAL_EVERY Timesteps between held-out evaluations, each rounded up to the next PPO update; "
        "0: only at the end (default: min(5, PPO updates in the budget) evaluations" in help_text
    )


@pytest.mark.slow
def test_tasks_module_reaches_the_env_workers_and_the_card_says_what_was_trained(tmp_path) -> None:
    """The retraining path of docs/retraining.md, as a user runs it.

    ``chuck`` the console script, run in a directory holding the user's task module and nothing
    else: the module is found there, imported in the command's process and in both
    ``SubprocVecEnv`` workers (fresh forkserver interpreters), one task is weighted up, and the
    card and the MLflow run list the resolved tasks with each one's episodes and mean return.
    """
    import csv
    import json
    import os
    import subprocess
    from pathlib import Path

    import mlflow

    from tests.zoo.test_registry import write_task_module

    work = tmp_path / "work"
    work.mkdir()
    write_task_module(work, "my_tasks", {"Often": "inhouse.often", "Rare": "inhouse.rare"})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = [
        str(Path(sys.executable).parent / "chuck"),
        "train-policy",
        "--tasks-module", "my_tasks",
        "--tasks", "custom",
        "--task-weights", "inhouse.often=50",
        "--eval-tasks", "inhouse.rare",
        "--timesteps", "256",
        "--n-envs", "2",
        "--interval", "5",
        "--budget-scale", "0.1",
        "--eval-episodes", "1",
        "--checkpoint-every", "10000",
        "--ppo", '{"n_steps": 32, "batch_size": 32, "n_epochs": 2}',
        "--output", str(tmp_path / "run"),
        "--tracking-uri", uri,
        "--name", "inhouse",
        "--alias", "test",
        "--no-progress",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CHUCK_TASKS_MODULES")}
    env.update(OMP_NUM_THREADS="1", CHUCK_HOME=str(tmp_path / "home"))
    out = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]

    card = json.loads((tmp_path / "run" / "artifact" / "policy.json").read_text())
    training = card["training"]
    assert training["resolved_tasks"] == ["inhouse.often", "inhouse.rare"] and training["tasks"] == "custom"
    assert training["tasks_module"] == ["my_tasks"] and training["task_weights"] == {"inhouse.often": 50.0}
    per_task = training["episodes_per_task"]
    often, rare = per_task["inhouse.often"], per_task["inhouse.rare"]
    assert often["episodes"] >= 10 and often["episodes"] >= 5 * rare["episodes"], per_task  # 50:1, not 1:1
    assert np.isfinite(often["mean_return"])

    # --eval-every's default (a fifth of 256, at least one 64-step rollout): four points, none twice
    with open(tmp_path / "run" / "evaluations.csv", newline="") as f:
        assert [int(r["timesteps"]) for r in csv.DictReader(f)] == [64, 128, 192, 256]

    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(training["mlflow_run_id"])
    assert run.data.tags["chuck.resolved_tasks"] == "inhouse.often,inhouse.rare"
    assert run.data.metrics["task.inhouse.often.episodes"] == often["episodes"]
    assert run.data.metrics["task.inhouse.often.mean_return"] == pytest.approx(often["mean_return"])
    logged = json.loads(Path(client.download_artifacts(run.info.run_id, "training/tasks.json", str(tmp_path))).read_text())
    assert logged == {"resolved_tasks": training["resolved_tasks"], "episodes_per_task": per_task}


@pytest.mark.slow
def test_a_task_registered_in_the_calling_script_reaches_subprocess_workers(tmp_path, monkeypatch) -> None:
    """``register_task`` then ``train_policy`` in one script: the workers get the task by value.

    The class is local to this function, so a worker cannot import it: it only exists there
    because meta-training sends the in-house tasks it resolved along with each environment.
    """
    from chuck import zoo
    from tests.metatrain.local_tasks import local_task

    Local = local_task("inhouse.local_script")
    zoo.register_task(Local, replace=True)
    try:
        cfg = MetaTrainConfig(
            tasks="custom",
            eval_tasks="inhouse.local_script",
            timesteps=64,
            n_envs=2,
            interval=5,
            budget_scale=0.1,
            eval_every=0,
            eval_episodes=1,
            checkpoint_every=10_000,
            output=str(tmp_path / "run"),
            tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
            progress=False,
            name="local",
            ppo={"n_steps": 32, "batch_size": 32, "n_epochs": 1},
        )
        result = train_policy(cfg)
    finally:
        zoo.unregister_task("inhouse.local_script")
    training = chuck.load_policy(str(result.artifact_dir)).card["training"]
    assert training["resolved_tasks"] == ["inhouse.local_script"]
    assert training["episodes_per_task"]["inhouse.local_script"]["episodes"] >= 2


def test_held_out_evaluation_in_workers_matches_one_process() -> None:
    """The held-out evaluation runs in worker processes (one torch thread each); the rows
    are fixed by the episode seeds, so they do not depend on the number of workers."""
    from chuck.metatrain.train import evaluate_policy

    kw = {"interval": 10, "budget_scale": 0.15, "seed": 7}
    policy = chuck.load_policy("prior")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers: float sums in another order could change a trajectory
    try:
        alone = evaluate_policy(policy, "tabular.wine_mlp,tabular.breast_cancer_mlp", 3, **kw)
    finally:
        torch.set_num_threads(threads)
    pooled = evaluate_policy(policy, "tabular.wine_mlp,tabular.breast_cancer_mlp", 3, workers=2, **kw)
    assert [r["seed"] for r in pooled] == [7, 8, 9]
    assert [(r["task_id"], r["initial_lr"]) for r in alone] == [(r["task_id"], r["initial_lr"]) for r in pooled]
    np.testing.assert_allclose([r["return"] for r in alone], [r["return"] for r in pooled], rtol=1e-4, atol=1e-6)


def test_held_out_evaluation_by_path_loads_the_artifact_in_each_worker(tmp_path) -> None:
    """The in-training evaluation passes the snapshot's path, not a pickled policy: workers load it with
    the code they run (a policy pickled by a process started before the code changed failed to act in
    every worker). The rows equal those of the loaded object."""
    from chuck.metatrain.train import evaluate_policy
    from chuck.policies.artifact import bundled_artifact_dir

    kw = {"interval": 10, "budget_scale": 0.15, "seed": 3}
    path = str(bundled_artifact_dir("default"))
    by_object = evaluate_policy(chuck.load_policy(path), "tabular.wine_mlp", 2, workers=2, **kw)
    by_path = evaluate_policy(path, "tabular.wine_mlp", 2, workers=2, **kw)
    assert [r["return"] for r in by_path] == [r["return"] for r in by_object]
    assert all(r["failed_asks"] == 0 for r in by_path)
    with pytest.raises(chuck.PolicyLoadError):
        evaluate_policy(str(tmp_path / "missing"), "tabular.wine_mlp", 1, **kw)


def test_held_out_evaluation_applies_the_policys_warmup() -> None:
    """The held-out evaluation asks a whole policy (prior included) through an env without a prior of
    its own; the run must still warm up as ChuckOptimizer does for that policy in deployment."""
    from chuck.envs import TrainingControlEnv
    from chuck.metatrain.train import evaluate_policy

    policy = chuck.load_policy("prior@10")
    assert policy.warmup
    kw = {"interval": 10, "budget_scale": 0.15, "seed": 3}
    (row,) = evaluate_policy(policy, "tabular.wine_mlp", 1, **kw)

    def by_hand(warmup: int) -> float:
        env = TrainingControlEnv(tasks="tabular.wine_mlp", interval=10, budget_scale=0.15, warmup=warmup)
        obs, _ = env.reset(seed=3)
        policy.reset()
        done, ret = False, 0.0
        while not done:
            env.opt.controller.policy = policy
            action = env.opt.controller.ask(obs).action.astype(np.float32)
            env.opt.controller.policy = None
            obs, r, done, _, _ = env.step(action)
            ret += r
        env.close()
        return ret

    assert row["return"] == pytest.approx(by_hand(policy.warmup), rel=1e-6)
    assert row["return"] != pytest.approx(by_hand(0), rel=1e-6), "without the warm-up the run differs"


def test_held_out_evaluation_counts_asks_that_failed() -> None:
    """A policy that cannot be asked scores exactly as holding the lr does (the controller holds on any
    failure); the evaluation rows say how often that happened and why, so that it is not mistaken
    for a policy that learned to hold."""
    from chuck.metatrain.train import evaluate_policy
    from chuck.policies.base import Policy

    class Broken(Policy):  # a fault injected on purpose
        name = "broken"

        def act(self, observation: np.ndarray) -> np.ndarray:
            raise RuntimeError("injected")

    kw = {"interval": 10, "budget_scale": 0.15, "seed": 3}
    (held,) = evaluate_policy(None, "tabular.wine_mlp", 1, **kw)
    (broken,) = evaluate_policy(Broken(), "tabular.wine_mlp", 1, **kw)
    assert broken["return"] == pytest.approx(held["return"])
    assert broken["failed_asks"] > 0 and "injected" in broken["first_failure"]
    (fine,) = evaluate_policy(chuck.load_policy("prior@10"), "tabular.wine_mlp", 1, **kw)
    assert fine["failed_asks"] == 0 and fine["first_failure"] == ""


def test_evaluation_table_of_a_run_resumed_across_versions_keeps_every_column(tmp_path) -> None:
    """A checkpoint written before ``failed_asks`` existed, resumed by a version that logs it: the
    final table must hold both kinds of rows (the v4 recipe crashed here after 200k decisions)."""
    import csv

    from chuck import tracking
    from chuck.metatrain.train import _log_eval_outputs

    mlflow = tracking.setup(f"sqlite:///{tmp_path / 'mlflow.db'}", "resumed")
    old = {"timesteps": 5000, "heldout_return": 1.0, "constant_return": 2.0, "advantage": -1.0, "diverged": 0.0}
    new = {**old, "timesteps": 10000, "failed_asks": 0.0}
    with mlflow.start_run():
        _log_eval_outputs(mlflow, tmp_path, [old, new], [])
    with open(tmp_path / "evaluations.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["timesteps"] for r in rows] == ["5000", "10000"]
    assert rows[0]["failed_asks"] == "" and rows[1]["failed_asks"] == "0.0"
    assert (tmp_path / "heldout_curve.png").stat().st_size > 0
