"""Optuna and MLflow on a real PostgreSQL server (``CHUCK_TEST_POSTGRES_URL``; see tests/postgres.py).

* ``chuck tune --storage postgresql://... --n-workers 2``: two worker processes share one study;
  every trial is run once, none is left behind, both workers ran trials.
* An interrupted study (the command killed while a trial runs) resumes: the dead trial is
  failed and retried with the parameters it had drawn, and the study reaches its trial count.
* A real ``mlflow server`` with its backend store in PostgreSQL and a served artifact store:
  ``tune``, ``train-policy``, ``evaluate`` and ``MLflowDecisionLogger`` log to it, and
  ``load_policy("models:/NAME@ALIAS")`` loads from its registry.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import optuna
import pytest
import torch
import torch.nn.functional as F
from mlflow import MlflowClient

import chuck
from chuck.cli.main import main
from chuck.tuning.study import retry_callback
from tests.conftest import batch, make_net
from tests.evaluation.test_evaluate import ORACLE, SCALE, tiny_tasks  # noqa: F401 - fixture
from tests.mlflow_server import MlflowServer
from tests.postgres import _admin, fresh_database, postgres_url, query, with_database  # noqa: F401 - fixtures

TASK = "tabular.wine_mlp"
States = optuna.trial.TrialState


@pytest.fixture(scope="module")
def mlflow_server(postgres_url, tmp_path_factory):  # noqa: F811
    """``mlflow server`` whose backend store is a fresh PostgreSQL database; yields (server, that database's URL)."""
    name = f"chuck_mlflow_{uuid.uuid4().hex[:8]}"
    _admin(postgres_url, f'CREATE DATABASE "{name}"')
    db = with_database(postgres_url, name)
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow-pg"), backend_uri=db).start(timeout=180)
    try:
        yield srv, db
    finally:
        srv.stop()
        _admin(postgres_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _tune_args(
    storage: str, uri: str, trials: int, study: str, workers: int = 2, heartbeat: int = 10, steps: int = 100
) -> list[str]:
    return [
        "tune",
        "--task",
        TASK,
        "--trials",
        str(trials),
        "--steps",
        str(steps),
        "--storage",
        storage,
        "--study",
        study,
        "--n-workers",
        str(workers),
        "--tracking-uri",
        uri,
        "--cold",
        "--heartbeat-interval",
        str(heartbeat),
    ]


def test_tune_workers_share_one_study(fresh_database, mlflow_server) -> None:  # noqa: F811
    srv, mlflow_db = mlflow_server
    assert main(_tune_args(fresh_database, srv.uri, trials=6, study="shared")) == 0
    trials = optuna.load_study(study_name="shared", storage=fresh_database).trials
    finished = [t for t in trials if t.state in (States.COMPLETE, States.PRUNED)]
    table = [(t.number, t.state.name, t.user_attrs.get("chuck.worker"), t.params) for t in trials]
    assert 6 <= len(finished) <= 7, table  # at most n_workers - 1 over (two workers starting the last trial together)
    assert all(t.state in (States.COMPLETE, States.PRUNED) for t in trials), table  # none running, queued or lost
    assert len({tuple(sorted(t.params.items())) for t in trials}) == len(trials), table  # no trial ran twice
    assert len({t.user_attrs["chuck.worker"] for t in trials}) == 2, table  # both workers took trials

    client = MlflowClient(tracking_uri=srv.uri)
    exp = client.get_experiment_by_name("chuck-tune")
    parents = client.search_runs([exp.experiment_id], filter_string="attributes.run_name = 'tune:shared'")
    assert len(parents) == 1  # one parent run, whichever worker got there first
    children = client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'")
    assert len(children) == len(trials)
    assert query(mlflow_db, "SELECT count(*) FROM runs")[0][0] >= 1 + len(trials)  # the store really is PostgreSQL


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # retried_trial_number
def test_interrupted_study_resumes(fresh_database, mlflow_server, tmp_path) -> None:  # noqa: F811
    srv, _ = mlflow_server
    cmd = [
        sys.executable,
        "-m",
        "chuck.cli.main",
        *_tune_args(fresh_database, srv.uri, trials=6, study="resume", workers=1, heartbeat=1, steps=60),
    ]
    env = {**os.environ, "CHUCK_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    running_at_kill: set[int] = set()
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                trials = optuna.load_study(study_name="resume", storage=fresh_database).trials
            except KeyError:  # not created yet
                trials = []
            done = sum(t.state == States.COMPLETE for t in trials)
            running_at_kill = {t.number for t in trials if t.state == States.RUNNING}
            if done >= 2 and running_at_kill:
                break
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the command (and any worker it started), mid-trial
        proc.wait()
    assert running_at_kill, "the study never had a running trial to interrupt"

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    trials = {t.number: t for t in optuna.load_study(study_name="resume", storage=fresh_database).trials}
    assert sum(t.state in (States.COMPLETE, States.PRUNED) for t in trials.values()) >= 6
    assert not [t for t in trials.values() if t.state in (States.RUNNING, States.WAITING)]
    retried = {retry_callback(optuna).retried_trial_number(t): t for t in trials.values()}
    for n in running_at_kill:  # each interrupted trial failed once and ran again with its parameters
        assert trials[n].state == States.FAIL
        # the parameters it had drawn before the kill are kept (a trial killed mid-suggest draws the rest)
        assert n in retried and trials[n].params.items() <= retried[n].params.items()
        assert retried[n].state in (States.COMPLETE, States.PRUNED)


@pytest.mark.slow
def test_train_policy_registry_and_decision_logger(mlflow_server, tmp_path, monkeypatch) -> None:
    srv, _ = mlflow_server
    assert (
        main(
            [
                "train-policy",
                "--tasks",
                TASK,
                "--eval-tasks",
                TASK,
                "--timesteps",
                "64",
                "--n-envs",
                "1",
                "--interval",
                "5",
                "--budget-scale",
                "0.2",
                "--eval-every",
                "0",
                "--eval-episodes",
                "1",
                "--output",
                str(tmp_path / "run"),
                "--tracking-uri",
                srv.uri,
                "--name",
                "pg-tiny",
                "--alias",
                "test",
                "--no-progress",
                "--ppo",
                '{"n_steps": 32, "batch_size": 32, "n_epochs": 1}',
            ]
        )
        == 0
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", srv.uri)
    registered = chuck.load_policy("models:/pg-tiny@test")  # downloaded through the server's artifact store
    local = chuck.load_policy(str(tmp_path / "run" / "artifact"))
    obs = chuck.ObservationSpec().space.sample()
    np.testing.assert_array_equal(registered.act(obs), local.act(obs))

    logger = chuck.MLflowDecisionLogger(experiment="chuck-pg", run_name="decisions", tracking_uri=srv.uri, flush_every=0.2)
    model = make_net()
    opt = chuck.ChuckOptimizer(
        torch.optim.AdamW(model.parameters(), lr=1e-3), registered, model=model, interval=5, tracking=logger, history=False
    )
    for s in range(40):
        x, y = batch(s)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step(loss=loss)
        opt.zero_grad()
    opt.close()
    client = MlflowClient(tracking_uri=srv.uri)
    assert len(opt.decisions) > 0 and client.get_run(logger.run_id).data.metrics  # the decisions' metrics
    assert client.list_artifacts(logger.run_id)  # the decision table, through the served artifact store


@pytest.mark.slow
def test_evaluate_logs_to_the_server(mlflow_server, tiny_tasks, tmp_path) -> None:  # noqa: F811
    srv, _ = mlflow_server
    assert (
        main(
            [
                "evaluate",
                "--policies",
                "heuristic",
                "--baselines",
                "adamw",
                "--tasks",
                "test.tiny_a",
                "--lrs",
                "0.01",
                "--seeds",
                "0",
                "--budget-scale",
                str(SCALE),
                "--oracle-lrs",
                ",".join(map(str, ORACLE)),
                "--out",
                str(tmp_path / "ev"),
                "--tracking-uri",
                srv.uri,
                "--no-progress",
            ]
        )
        == 0
    )
    client = MlflowClient(tracking_uri=srv.uri)
    runs = client.search_runs([client.get_experiment_by_name("chuck-evaluate").experiment_id])
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parent) == 1 and "chuck_heuristic.median_regret" in {k.replace(":", "_") for k in parent[0].data.metrics}
    assert "summary.json" in {a.path for a in client.list_artifacts(parent[0].info.run_id)}
