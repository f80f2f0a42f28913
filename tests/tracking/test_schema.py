"""A local SQLite store that a newer MLflow than the installed one migrated (two environments sharing
``$CHUCK_HOME``) is refused at once, asking for a newer MLflow, where MLflow's own message asks for
``mlflow db upgrade``, which cannot go forward. Real stores: each test copies one that MLflow created,
then moves its schema revision."""

from __future__ import annotations

import shutil
import sqlite3
import textwrap
from pathlib import Path
from urllib.parse import quote

import pytest
from mlflow import MlflowClient

import chuck
from chuck import tracking
from chuck.cli.main import main
from chuck.tracking.schema import StoreSchemaError, check_store_schema, mlflow_revisions, revisions_in, store_revision


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
    import mlflow
    from alembic.script import ScriptDirectory

    known, head = mlflow_revisions()
    migrations = Path(mlflow.__file__).parent / "store" / "db_migrations"
    assert [head] == ScriptDirectory(str(migrations)).get_heads()
    assert head in known and len(known) > 10
    assert store_revision(fresh_store) == head


def _script(versions: Path, name: str, text: str) -> None:
    (versions / f"{name}.py").write_text(textwrap.dedent(text))


def test_the_graph_reader_takes_annotated_revisions_and_merges(tmp_path) -> None:
    _script(tmp_path, "a", 'revision = "a1"\ndown_revision = None\n')
    _script(tmp_path, "b", 'revision: str = "b1"\ndown_revision: str | None = "a1"\n')
    _script(tmp_path, "c", 'revision = "c1"\ndown_revision = "a1"\n')
    _script(tmp_path, "m", 'revision: str = "m1"\ndown_revision = ("b1", "c1")\n')
    assert revisions_in(tmp_path) == (frozenset({"a1", "b1", "c1", "m1"}), "m1")
    _script(tmp_path, "d", 'revision = "d1"\ndown_revision = "a1"\n')  # a second head: no verdict
    assert revisions_in(tmp_path)[1] is None
    _script(tmp_path, "e", "revision = make_revision()\n")  # not readable as data: the check is off
    assert revisions_in(tmp_path) == (frozenset(), None)


def test_a_store_at_the_installed_head_and_stores_not_made_yet_pass(tmp_path, fresh_store) -> None:
    uri = _store_at(tmp_path, fresh_store)
    check_store_schema(uri)
    tracking.setup(uri, "ok")
    check_store_schema(f"sqlite:///{tmp_path / 'not-yet.db'}")
    check_store_schema("http://127.0.0.1:1")  # a server's store is the server's business
    mid_creation = tmp_path / "mid.db"
    sqlite3.connect(mid_creation).close()  # another process has just created the file, no tables yet
    check_store_schema(f"sqlite:///{mid_creation}")


def test_the_store_file_is_found_as_sqlalchemy_finds_it(tmp_path, fresh_store) -> None:
    """A query string is not part of the path, a percent escape is decoded, and a '#' in a directory name
    neither cuts the path short nor leaves a stray file."""
    odd = tmp_path / "run#1 50%"
    odd.mkdir()
    shutil.copy(fresh_store, odd / "mlflow.db")
    with sqlite3.connect(odd / "mlflow.db") as con:
        con.execute("UPDATE alembic_version SET version_num = '0123456789ab'")
    before = sorted(p.name for p in tmp_path.iterdir())
    for uri in (f"sqlite:///{odd / 'mlflow.db'}?timeout=20", f"sqlite:///{quote(str(odd / 'mlflow.db'))}"):
        with pytest.raises(StoreSchemaError, match="newer MLflow"):
            check_store_schema(uri)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_store_a_newer_mlflow_wrote_asks_for_a_newer_mlflow(tmp_path, fresh_store) -> None:
    uri = _store_at(tmp_path, fresh_store, "0123456789ab")
    with pytest.raises(StoreSchemaError, match=r"newer MLflow.*0123456789ab.*pip install -U mlflow") as err:
        check_store_schema(uri)
    assert "mlflow db upgrade" not in str(err.value)  # MLflow's own advice, which cannot go forward
    with pytest.raises(StoreSchemaError, match="newer MLflow"):
        tracking.setup(uri, "x")
    with pytest.raises(StoreSchemaError, match="newer MLflow"):  # before training starts, not in the sender thread
        chuck.MLflowDecisionLogger(experiment="x", tracking_uri=uri, spool_dir=tmp_path / "spool")
    with pytest.raises(StoreSchemaError, match="newer MLflow"):
        tracking.register_artifact("run", "policy", "model", tracking_uri=uri)


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
