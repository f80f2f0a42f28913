"""A local SQLite store that a newer MLflow than the installed one migrated (two environments sharing
``$CHUCK_HOME``) is refused at once, asking for a newer MLflow, where MLflow's own message asks for
``mlflow db upgrade``, which cannot go forward. Real stores: each test copies one that MLflow created,
then moves its schema revision."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from mlflow import MlflowClient

import chuck
from chuck import tracking
from chuck.cli.main import main
from chuck.tracking.schema import StoreSchemaError, check_store_schema, mlflow_revisions, store_revision


@pytest.fixture(scope="module")
def fresh_store(tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()  # creates the schema at MLflow's head
    return db


def _store_at(tmp_path: Path, template: Path, revision: str | None = None) -> str:
    db = tmp_path / "mlflow.db"
    shutil.copy(template, db)
    if revision is not None:
        with sqlite3.connect(db) as con:
            con.execute("UPDATE alembic_version SET version_num = ?", (revision,))
    return f"sqlite:///{db}"


def test_the_migration_graph_read_from_files_has_mlflows_own_head(fresh_store) -> None:
    from mlflow.store.db.utils import _get_latest_schema_revision

    known, head = mlflow_revisions()
    assert head == _get_latest_schema_revision()
    assert head in known and len(known) > 10
    assert store_revision(fresh_store) == head


def test_a_store_at_the_installed_head_and_stores_not_made_yet_pass(tmp_path, fresh_store) -> None:
    uri = _store_at(tmp_path, fresh_store)
    check_store_schema(uri)
    tracking.setup(uri, "ok")
    check_store_schema(f"sqlite:///{tmp_path / 'not-yet.db'}")
    check_store_schema("http://127.0.0.1:1")  # a server's store is the server's business


def test_a_store_a_newer_mlflow_wrote_asks_for_a_newer_mlflow(tmp_path, fresh_store) -> None:
    uri = _store_at(tmp_path, fresh_store, "0123456789ab")
    with pytest.raises(StoreSchemaError, match=r"newer MLflow.*0123456789ab.*pip install -U mlflow") as err:
        check_store_schema(uri)
    assert "mlflow db upgrade" not in str(err.value)  # MLflow's own advice, which cannot go forward
    with pytest.raises(StoreSchemaError, match="newer MLflow"):
        tracking.setup(uri, "x")
    with pytest.raises(StoreSchemaError, match="newer MLflow"):  # before training starts, not in the sender thread
        chuck.MLflowDecisionLogger(experiment="x", tracking_uri=uri, spool_dir=tmp_path / "spool")


def test_a_store_an_older_mlflow_wrote_is_left_to_mlflows_own_upgrade_advice(tmp_path, fresh_store) -> None:
    """A known revision below the head is also what a store being created by another process shows
    between two migrations: chuck must not refuse it, and MLflow's message is right for it."""
    from mlflow.exceptions import MlflowException

    known, head = mlflow_revisions()
    older = sorted(known - {head})[0]
    uri = _store_at(tmp_path, fresh_store, older)
    check_store_schema(uri)
    with pytest.raises(MlflowException, match="mlflow db upgrade"):
        tracking.setup(uri, "x")


def test_the_cli_says_it_in_one_line_and_exits_2(tmp_path, fresh_store, capsys) -> None:
    uri = _store_at(tmp_path, fresh_store, "0123456789ab")
    assert main(["ui", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("chuck ui: error: the MLflow store") and "newer MLflow" in err and "\n" not in err
