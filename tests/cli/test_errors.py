"""A mistake on the command line is one line on stderr, ``chuck <command>: error: ...``, and exit status 2
(usage) or 1 (the command could not do its work): never a traceback, never a result from a refused setting."""

from __future__ import annotations

import sqlite3
import sys

import pytest

from chuck.cli.main import main
from tests.mlflow_server import free_port


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith(f"chuck {command}: error: "), err
    return err


TUNE = ["tune", "--task", "cv.digits_mlp", "--trials", "1", "--steps", "5", "--cold"]


@pytest.mark.parametrize(
    ("storage", "said"),
    [
        ("sqlite:///{tmp}", "unable to open database file (a directory"),
        ("foo://bar", "no database driver for its scheme"),
        ("not a url", "not a database URL"),
    ],
)
def test_tune_storage_that_cannot_be_opened(tmp_path, capsys, storage, said) -> None:
    argv = [*TUNE, "--storage", storage.format(tmp=tmp_path), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]
    assert main(argv) == 1
    assert said in _one_line_error(capsys, "tune")


def test_tune_storage_locked_by_another_process(tmp_path, capsys) -> None:
    db = tmp_path / "locked.db"
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")  # as a crashed or stuck writer would hold it
    try:
        assert main([*TUNE, "--storage", f"sqlite:///{db}", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]) == 1
    finally:
        holder.close()
    assert "database is locked" in _one_line_error(capsys, "tune")


def test_tune_refuses_a_negative_step_budget(tmp_path, capsys) -> None:
    argv = ["tune", "--task", "cv.digits_mlp", "--trials", "1", "--steps", "-3", "--storage", f"sqlite:///{tmp_path / 'o.db'}"]
    assert main(argv) == 2
    assert "--steps must be >= 1" in _one_line_error(capsys, "tune")
    assert not (tmp_path / "o.db").exists(), "no study was opened"


def test_tune_with_an_unreachable_tracking_server_fails_fast(tmp_path, capsys) -> None:
    argv = [*TUNE, "--storage", f"sqlite:///{tmp_path / 'o.db'}", "--tracking-uri", f"http://127.0.0.1:{free_port()}"]
    assert main(argv) == 1
    assert "is unreachable" in _one_line_error(capsys, "tune")  # the reachability check's verdict, before any retry


@pytest.mark.parametrize(
    "argv",
    [
        [*TUNE],
        ["demo", "--quick"],
        ["ui", "--port", "0"],
        ["evaluate", "--out", "{tmp}/ev", "--tasks", "cv.digits_mlp"],
        ["train-policy", "--output", "{tmp}/run", "--timesteps", "10"],
    ],
)
def test_a_tracking_uri_that_names_no_store(tmp_path, capsys, monkeypatch, argv) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "foo://bar")
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    assert "'foo://bar' (from $MLFLOW_TRACKING_URI) names no MLflow store" in _one_line_error(capsys, argv[0])
    assert not (tmp_path / "ev").exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag", ["--json", "--csv"])
def test_history_to_a_file_that_cannot_be_written(capsys, flag) -> None:
    assert main(["history", flag, "/dev/null/runs.out"]) == 1
    assert f"{flag} /dev/null/runs.out: cannot write it" in _one_line_error(capsys, "history")


def test_history_with_chuck_home_a_regular_file(tmp_path, capsys, monkeypatch) -> None:
    (tmp_path / "f").write_text("x")
    monkeypatch.setenv("CHUCK_HOME", str(tmp_path / "f"))
    assert main(["history"]) == 1
    assert "is not a usable directory: it is not a directory" in _one_line_error(capsys, "history")


@pytest.mark.parametrize(
    "argv",
    [
        ["evaluate", "--out", "/dev/null/out", "--tasks", "cv.digits_mlp", "--no-mlflow"],
        ["train-policy", "--output", "/dev/null/out", "--timesteps", "10"],
    ],
)
def test_an_output_directory_under_a_file(capsys, argv) -> None:
    assert main(argv) == 2
    assert "/dev/null/out: cannot write there (/dev/null is not a directory)" in _one_line_error(capsys, argv[0])


@pytest.mark.parametrize("command", ["evaluate", "train-policy"])
def test_a_tasks_module_given_as_a_path(tmp_path, capsys, monkeypatch, command) -> None:
    from chuck.zoo import registry

    monkeypatch.setenv(registry.MODULES_ENV, "")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.py").write_text("X = 1\n")
    out = "--out" if command == "evaluate" else "--output"
    argv = [command, "--tasks-module", "./x.py", out, str(tmp_path / "o"), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]
    assert main(argv) == 2
    err = _one_line_error(capsys, command)
    assert "'./x.py' is a file path" in err and "'x'" in err


def test_train_policy_init_policy_that_does_not_exist(tmp_path, capsys, monkeypatch) -> None:
    """The run stops where meta-training loads --init-policy, before it trains."""
    import chuck.metatrain.train as train

    def stops_at_the_start(cfg):
        train._fine_tune_start(cfg)
        raise AssertionError("a missing --init-policy must stop meta-training before it starts")

    monkeypatch.setattr(train, "train_policy", stops_at_the_start)
    argv = ["train-policy", "--init-policy", "/nonexistent", "--output", str(tmp_path / "run")]
    assert main([*argv, "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]) == 2
    assert "--init-policy: no policy directory at '/nonexistent'" in _one_line_error(capsys, "train-policy")


if sys.platform == "win32":  # pragma: no cover
    pytestmark = pytest.mark.skip(reason="POSIX paths")
