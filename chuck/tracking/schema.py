"""Is a local SQLite tracking store readable by the MLflow installed here?

MLflow versions its database schema with Alembic and refuses a store whose revision is not the head
of its own migrations, with one message for both directions: "out-of-date database schema ... run
'mlflow db upgrade'". That advice is right for a store an older MLflow wrote and wrong for one a
newer MLflow wrote (two environments sharing ``$CHUCK_HOME``: the one with the newer MLflow migrated
the store, and ``mlflow db upgrade`` from the older one cannot go forward). :func:`check_store_schema`
catches that case before MLflow opens the store and says what to do.

It reads the store's revision with the standard library's ``sqlite3`` and MLflow's migration graph
from the files of its ``db_migrations/versions`` package, without importing MLflow (which takes
seconds): the MLflow decision logger checks its store in its constructor, before training starts.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import sqlite3
from pathlib import Path


class StoreSchemaError(RuntimeError):
    """The tracking store's schema is not the one the installed MLflow reads."""


_REVISION = re.compile(r"^(down_revision|revision)\s*=\s*['\"]([0-9A-Za-z_]+)['\"]", re.MULTILINE)


@functools.lru_cache(maxsize=1)
def mlflow_revisions() -> tuple[frozenset[str], str | None]:
    """Every schema revision the installed MLflow knows, and its head (the one it requires).

    Empty and ``None`` where MLflow or its migrations cannot be found (nothing is checked then).
    """
    spec = importlib.util.find_spec("mlflow")
    if spec is None or not spec.submodule_search_locations:
        return frozenset(), None
    versions = Path(next(iter(spec.submodule_search_locations))) / "store" / "db_migrations" / "versions"
    known: set[str] = set()
    parents: set[str] = set()
    for script in versions.glob("*.py"):
        for kind, rev in _REVISION.findall(script.read_text(encoding="utf-8", errors="replace")):
            (known if kind == "revision" else parents).add(rev)
    heads = known - parents
    return frozenset(known), (next(iter(heads)) if len(heads) == 1 else None)


def store_revision(db: Path) -> str | None:
    """The Alembic revision of the SQLite store at ``db``; ``None`` where it has none yet (a new store)."""
    if not db.is_file():
        return None
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            row = con.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:  # no such table (not initialized yet), or not a database: MLflow reports the latter
        return None
    return str(row[0]) if row else None


def check_store_schema(uri: str) -> None:
    """Raise :class:`StoreSchemaError` if ``uri`` is a SQLite store that a newer MLflow than the installed
    one has migrated.

    Only ``sqlite:///`` stores are read; any other store, a store not created yet and one whose revision
    the installed MLflow knows pass. A known revision older than the head is left to MLflow, whose own
    error asks for ``mlflow db upgrade``, the right fix there; and a store that another process is
    creating at this moment (several ranks or workers opening a new store) shows such a revision between
    two of its migrations, which MLflow waits out under its lock.
    """
    if not uri.startswith("sqlite:///"):
        return
    db = Path(uri[len("sqlite:///") :])
    found = store_revision(db)
    known, head = mlflow_revisions()
    if found is None or head is None or found in known:
        return
    raise StoreSchemaError(
        f"the MLflow store {db} was written by a newer MLflow than the one installed here "
        f"(MLflow {_installed_mlflow_version()}): its schema is {found}, which this MLflow does not know (it "
        f"reads {head}). Upgrade MLflow in this environment (pip install -U mlflow), or give chuck another store: "
        "CHUCK_HOME=DIR for a new local one, or MLFLOW_TRACKING_URI"
    )


def _installed_mlflow_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mlflow")
    except PackageNotFoundError:  # pragma: no cover - found by find_spec above, so installed
        return "(version unknown)"
