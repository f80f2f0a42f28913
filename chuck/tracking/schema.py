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

import ast
import contextlib
import functools
import importlib.util
import sqlite3
from pathlib import Path
from urllib.parse import unquote


class StoreSchemaError(RuntimeError):
    """The tracking store's schema is not the one the installed MLflow reads."""


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, as SQLAlchemy reads it (query string dropped, the path
    percent-decoded), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(unquote(uri[len("sqlite:///") :].split("?", 1)[0]))


def revisions_in(versions: Path) -> tuple[frozenset[str], str | None]:
    """The Alembic revisions of the migration scripts in ``versions`` and their single head.

    Each script's module-level ``revision`` and ``down_revision`` are read as Python (annotated or not; a
    merge's ``down_revision`` is a tuple). Empty and ``None`` unless every script names its revision and the
    graph has one head: a layout this cannot read switches the check off rather than refuse a good store.
    """
    known: set[str] = set()
    parents: set[str] = set()
    for script in versions.glob("*.py"):
        if script.name == "__init__.py":
            continue
        found = _assigned(script, ("revision", "down_revision"))
        revision = found.get("revision")
        if not isinstance(revision, str):
            return frozenset(), None
        known.add(revision)
        down = found.get("down_revision")
        if isinstance(down, str):
            parents.add(down)
        elif isinstance(down, tuple):  # a merge of several branches
            parents.update(d for d in down if isinstance(d, str))
    heads = known - parents
    return frozenset(known), (next(iter(heads)) if len(heads) == 1 else None)


def _assigned(script: Path, names: tuple[str, ...]) -> dict[str, object]:
    try:
        tree = ast.parse(script.read_text(encoding="utf-8", errors="replace"))
    except SyntaxError:
        return {}
    out: dict[str, object] = {}
    for node in tree.body:
        value: ast.expr | None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign):  # revision: str = "..."
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id in names and value is not None:
            with contextlib.suppress(ValueError):
                out[target.id] = ast.literal_eval(value)
    return out


@functools.lru_cache(maxsize=1)
def mlflow_revisions() -> tuple[frozenset[str], str | None]:
    """Every schema revision the installed MLflow knows, and its head (the one it requires).

    Empty and ``None`` where MLflow or its migration scripts cannot be found (nothing is checked then).
    """
    spec = importlib.util.find_spec("mlflow")
    if spec is None or not spec.submodule_search_locations:
        return frozenset(), None
    return revisions_in(Path(next(iter(spec.submodule_search_locations))) / "store" / "db_migrations" / "versions")


def store_revision(db: Path) -> str | None:
    """The Alembic revision of the SQLite store at ``db``; ``None`` where it has none (not created yet, being
    created, locked, unreadable, not a database: MLflow reports what it has to)."""
    try:
        if not db.is_file():
            return None
        # read-only, as a URI built by pathlib (a '?', '#' or '%' in the path is quoted, not parsed)
        with contextlib.closing(sqlite3.connect(db.absolute().as_uri() + "?mode=ro", uri=True, timeout=0.5)) as con:
            row = con.execute("SELECT version_num FROM alembic_version").fetchone()
    except (sqlite3.Error, OSError):
        return None
    return str(row[0]) if row else None


def check_store_schema(uri: str) -> None:
    """Raise :class:`StoreSchemaError` if ``uri`` is a SQLite store that a newer MLflow than the installed
    one has migrated.

    Only ``sqlite:///`` stores are read; any other store, a store not created yet and one whose revision
    the installed MLflow knows pass, and so does every store where MLflow's migration scripts cannot be
    read. A known revision older than the head is left to MLflow, whose own error asks for ``mlflow db
    upgrade``, the right fix there; and a store that another process is creating at this moment (several
    ranks or workers opening a new store) shows such a revision between two of its migrations, which
    MLflow waits out under its lock.
    """
    db = sqlite_path(uri)
    if db is None:
        return
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

    for dist in ("mlflow", "mlflow-skinny"):
        with contextlib.suppress(PackageNotFoundError):
            return version(dist)
    return "(version unknown)"
