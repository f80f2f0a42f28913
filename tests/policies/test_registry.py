"""``load_policy("models:/NAME@ALIAS")`` from a fresh process finds what ``chuck train-policy``
registered under ``$CHUCK_HOME``, creates nothing in the working directory, leaks no temporary
directory, and against an unreachable server gives up at its reachability check instead of going
through the MLflow client's minutes of retries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from chuck.policies.artifact import bundled_artifact_dir
from tests.mlflow_server import free_port

ROOT = Path(__file__).resolve().parents[2]

# What chuck/metatrain/train.py does once training ends: tracking.setup() with no URI, log the
# artifact directory under "policy", register it with an alias.
REGISTER = """
import sys
from chuck import tracking
mlflow = tracking.setup(None, "chuck-meta")
with mlflow.start_run() as run:
    mlflow.log_artifacts(sys.argv[1], artifact_path="policy")
print(tracking.register_artifact(run.info.run_id, "policy", "tiny-policy", "champion"))
"""

# Each call reports its outcome as one JSON line.
LOAD = """
import json, sys, chuck
for uri in sys.argv[1:]:
    try:
        p = chuck.load_policy(uri)
        outcome = "loaded " + p.id
    except chuck.PolicyLoadError as exc:
        outcome = "PolicyLoadError: " + str(exc)
    print(json.dumps({"uri": uri, "outcome": outcome}))
"""


def _run(code: str, args: list[str], home: Path, cwd: Path, tmpdir: Path, **env_extra: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(CHUCK_HOME=str(home), TMPDIR=str(tmpdir), PYTHONPATH=str(ROOT), **env_extra)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def registered(tmp_path_factory) -> Path:
    """A CHUCK_HOME holding the bundled default policy registered as models:/tiny-policy@champion."""
    base = tmp_path_factory.mktemp("registry")
    home, cwd, tmp = base / "home", base / "register-cwd", base / "tmp"
    for d in (cwd, tmp):
        d.mkdir()
    out = _run(REGISTER, [str(bundled_artifact_dir("default"))], home, cwd, tmp)
    assert out.strip() == "1"
    return home


@pytest.fixture
def dirs(tmp_path) -> tuple[Path, Path]:
    cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    return cwd, tmp


def _bundled_id() -> str:
    """What the loaded policy must call itself: the bundled default's own card (not a copy of it)."""
    card = json.loads((bundled_artifact_dir("default") / "policy.json").read_text())
    return f"{card['name']}@{card['version']}"


def _load(uris: list[str], home: Path, cwd: Path, tmp: Path, **env: str) -> list[dict]:
    return [json.loads(line) for line in _run(LOAD, uris, home, cwd, tmp, **env).splitlines() if line.startswith("{")]


def test_registered_policy_loads_from_a_fresh_process(registered, dirs) -> None:
    cwd, tmp = dirs
    (result,) = _load(["models:/tiny-policy@champion"], registered, cwd, tmp)
    assert result["outcome"] == f"loaded {_bundled_id()}", result
    assert list(cwd.iterdir()) == [], "nothing may be created in the working directory"
    assert list(tmp.iterdir()) == [], "the download directory must be removed"


def test_a_local_store_is_read_without_importing_mlflow(registered, dirs) -> None:
    """From the local SQLite store the version is read from the database and the artifact loaded where it
    lies: MLflow's import (seconds) is not paid; an alias MLflow must resolve still goes through it."""
    cwd, tmp = dirs
    code = """
import json, sys, chuck
p = chuck.load_policy("models:/tiny-policy@champion")
q = chuck.load_policy("models:/tiny-policy/1")
print(json.dumps({"id": p.id, "same": q.id == p.id, "mlflow": "mlflow" in sys.modules}))
"""
    (line,) = [x for x in _run(code, [], registered, cwd, tmp).splitlines() if x.startswith("{")]
    assert json.loads(line) == {"id": _bundled_id(), "same": True, "mlflow": False}
    assert list(cwd.iterdir()) == [] and list(tmp.iterdir()) == []


def test_failed_fetch_cleans_up(registered, dirs) -> None:
    cwd, tmp = dirs
    results = _load(["models:/tiny-policy@nosuchalias", "models:/no-such-model/1"], registered, cwd, tmp)
    for r in results:
        assert r["outcome"].startswith("PolicyLoadError"), r
    assert list(cwd.iterdir()) == [] and list(tmp.iterdir()) == []


def test_missing_store_is_reported_not_created(tmp_path, dirs) -> None:
    cwd, tmp = dirs
    home = tmp_path / "empty-home"
    (result,) = _load(["models:/tiny-policy@champion"], home, cwd, tmp)
    assert result["outcome"].startswith("PolicyLoadError") and "no MLflow store" in result["outcome"], result
    assert not (home / "mlflow.db").exists() and list(cwd.iterdir()) == []


def test_unreachable_server_fails_at_the_reachability_check(registered, dirs) -> None:
    cwd, tmp = dirs
    port = free_port()  # bound, then released: nothing listens there
    (result,) = _load(["models:/tiny-policy@champion"], registered, cwd, tmp, MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}")
    # "is unreachable" is the reachability check's verdict: the retrying MLflow client was never asked
    assert result["outcome"].startswith("PolicyLoadError") and "is unreachable" in result["outcome"], result
    assert list(cwd.iterdir()) == [] and list(tmp.iterdir()) == []


def test_policy_registered_on_a_tracking_server_loads(tmp_path, dirs) -> None:
    """MLFLOW_TRACKING_URI names a server for both train-policy and load_policy (artifacts proxied)."""
    from tests.mlflow_server import MlflowServer

    cwd, tmp = dirs
    srv = MlflowServer(tmp_path / "srv").start()
    try:
        home = tmp_path / "home"
        _run(REGISTER, [str(bundled_artifact_dir("default"))], home, cwd, tmp, MLFLOW_TRACKING_URI=srv.uri)
        (result,) = _load(["models:/tiny-policy/1"], home, cwd, tmp, MLFLOW_TRACKING_URI=srv.uri)
    finally:
        srv.stop()
    assert result["outcome"] == f"loaded {_bundled_id()}", result
    assert list(cwd.iterdir()) == [] and list(tmp.iterdir()) == []
