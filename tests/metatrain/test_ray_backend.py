"""The Ray backend on a real local Ray cluster (``ray start --head`` on 127.0.0.1, 2 CPUs, stopped afterwards).

* :class:`chuck.metatrain.ray_backend.RayVecEnv`: an actor killed mid-episode is replaced and its episode
  replayed from the same start; the other environments go on.
* ``chuck train-policy --backend ray``: a tiny meta-training with 4 environment actors reaches a
  loadable artifact although one actor is killed (SIGKILL to its worker process) mid-run.
* ``chuck evaluate --backend ray``: the same rows as the in-process evaluation.
* Without Ray installed, ``--backend ray`` fails with the install command.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import numpy as np
import pytest

import chuck
from chuck.cli.main import main
from tests.evaluation.test_evaluate import ORACLE, SCALE, tiny_tasks  # noqa: F401 - the fixture, for the evaluate test
from tests.ray_cluster import RayCluster

TASKS = "tabular.wine_mlp,tabular.breast_cancer_mlp"


@pytest.fixture(scope="module")
def ray_cluster():
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'chuck[ray]')")
    cluster = RayCluster(num_cpus=2).start()
    saved = {k: os.environ.get(k) for k in cluster.env}
    os.environ.update(cluster.env)  # this process and the CLI's children join with the cluster's token
    try:
        yield cluster
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        cluster.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.mark.slow
def test_killed_actor_is_replaced_and_its_episode_replayed(ray_cluster) -> None:
    from chuck.metatrain.ray_backend import RayVecEnv
    from chuck.metatrain.train import _make_env

    thunks = [_make_env("tabular.wine_mlp", 5, 0.5, 1000 * i) for i in range(2)]
    venv = RayVecEnv(thunks, address=ray_cluster.address, num_cpus=0.5)
    try:
        hold = np.zeros((2, *venv.action_space.shape), dtype=np.float32)
        obs = venv.reset()
        starts = obs.copy()  # each env's current episode began with this observation
        for _ in range(3):
            obs, _, dones, _ = venv.step(hold)
            starts[dones] = obs[dones]
        assert not dones[1]
        victim = venv.placement[1][0]
        os.kill(victim, signal.SIGKILL)
        with pytest.warns(RuntimeWarning, match="environment actor 1 died"):
            obs, rewards, dones, infos = venv.step(hold)
        assert dones[1] and infos[1]["chuck.lost_episode"] and infos[1]["TimeLimit.truncated"]
        assert rewards[1] == 0.0 and "terminal_observation" in infos[1]
        np.testing.assert_array_equal(obs[1], starts[1])  # the same episode again, from its start
        assert not infos[0].get("chuck.lost_episode")
        assert venv.lost_episodes == 1 and venv.restarts == [0, 1] and venv.placement[1][0] != victim
        for _ in range(3):  # the replacement steps on
            venv.step(hold)
    finally:
        venv.close()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_train_policy_on_ray_survives_a_killed_actor(ray_cluster, tmp_path, capsys) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    killed: list[int] = []

    def kill_one_mid_rollout() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not killed:
            stepping = ray_cluster.pids("ray::EnvWorker.step")
            if len(ray_cluster.pids("ray::EnvWorker")) >= 4 and stepping:
                os.kill(stepping[0], signal.SIGKILL)
                killed.append(stepping[0])
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_mid_rollout, daemon=True)
    killer.start()
    code = main(
        [
            "train-policy",
            "--backend",
            "ray",
            "--ray-address",
            ray_cluster.address,
            "--n-envs",
            "4",
            "--ray-cpus-per-env",
            "0.5",
            "--tasks",
            TASKS,
            "--eval-tasks",
            "tabular.wine_mlp",
            "--timesteps",
            "192",
            "--interval",
            "5",
            "--budget-scale",
            "0.2",
            "--eval-every",
            "0",
            "--eval-episodes",
            "1",
            "--checkpoint-every",
            "64",
            "--output",
            str(tmp_path / "run"),
            "--tracking-uri",
            uri,
            "--name",
            "ray-tiny",
            "--alias",
            "test",
            "--no-progress",
            "--ppo",
            '{"n_steps": 16, "batch_size": 32, "n_epochs": 2}',
        ]
    )
    killer.join(timeout=5)
    out = capsys.readouterr().out
    assert code == 0, out
    assert killed, "no environment actor was seen stepping"
    assert "lost to dead environment actors were retried" in out
    policy = chuck.load_policy(str(tmp_path / "run" / "artifact"))
    assert policy.card["training"]["timesteps"] >= 192
    assert np.isfinite(policy.act(chuck.ObservationSpec().space.sample())).all()

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.search_runs([client.get_experiment_by_name("chuck-meta-training").experiment_id])[0]
    assert run.data.params["backend"] == "ray" and run.data.metrics["ray.lost_episodes"] >= 1


@pytest.mark.slow
def test_evaluate_on_ray_matches_in_process(ray_cluster, tiny_tasks, tmp_path, capsys, monkeypatch) -> None:  # noqa: F811
    from chuck.evaluation import evaluate

    common = {
        "policies": ["heuristic"],
        "baselines": ["adamw"],
        "tasks": "test.tiny_a,test.tiny_b",
        "lrs": [1e-3, 1e-1],
        "seeds": [0],
        "budget_scale": SCALE,
        "oracle_lrs": ORACLE,
        "mlflow": False,
        "progress": False,
    }
    local = evaluate(out=tmp_path / "local", workers=1, **common)
    monkeypatch.setenv("CHUCK_HOME", str(tmp_path / "home2"))  # no oracle cache: Ray runs every run again
    code = main(
        [
            "evaluate",
            "--backend",
            "ray",
            "--ray-address",
            ray_cluster.address,
            "--policies",
            "heuristic",
            "--baselines",
            "adamw",
            "--tasks",
            "test.tiny_a,test.tiny_b",
            "--lrs",
            "0.001,0.1",
            "--seeds",
            "0",
            "--budget-scale",
            str(SCALE),
            "--oracle-lrs",
            ",".join(map(str, ORACLE)),
            "--out",
            str(tmp_path / "ray"),
            "--no-mlflow",
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err
    import json

    summary = json.loads((tmp_path / "ray" / "summary.json").read_text())
    assert summary["settings"]["backend"] == "ray" and summary["settings"]["workers"] >= 2
    assert summary["executed"] == local.executed > 0

    def losses(path):
        import csv

        with open(path / "rows.csv", newline="") as f:
            return {r["key"]: r["final_loss"] for r in csv.DictReader(f)}

    assert losses(tmp_path / "ray") == losses(tmp_path / "local")  # the same runs, run elsewhere


def test_without_ray_the_backend_says_how_to_install(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as when it is not installed
    assert main(["train-policy", "--backend", "ray", "--output", str(tmp_path / "run"), "--no-progress"]) == 2
    assert "pip install 'chuck[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert main(["evaluate", "--backend", "ray", "--tasks", "tabular.wine_mlp", "--out", str(tmp_path / "ev")]) == 2
    assert "pip install 'chuck[ray]'" in capsys.readouterr().err
    from chuck.metatrain.ray_backend import require_ray

    with pytest.raises(ImportError, match=r"pip install 'chuck\[ray\]'"):
        require_ray()
