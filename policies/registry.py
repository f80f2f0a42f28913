"""Fetch a policy registered in MLflow (``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``).

The store is the one ``chuck train-policy`` registered into, found with
:func:`chuck.tracking.store.resolve_tracking_uri` (explicit argument, ``MLFLOW_TRACKING_URI``,
else ``$CHUCK_HOME/mlflow.db``), never MLflow's process default, which is a
``./mlflow.db`` it would create in the working directory.
Nothing is created in the working directory, the download directory is always
removed, and an unreachable server fails within seconds, not after the MLflow
client's minutes of retries.

From a local SQLite store whose artifacts are local files (the default store, where ``chuck
train-policy`` registers) the version is read straight from the database, read-only, and the
artifact loaded where it lies, without importing MLflow: the import alone (its GenAI, pandas and
SQLAlchemy modules, then the store's schema check) takes 4-13 s on a 2-core machine, the read a few
milliseconds. Anything else, or anything unexpected in that store (several workspaces, a deleted
version, an artifact elsewhere), goes through MLflow's client.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from chuck.core.loading import PolicyLoadError
from chuck.tracking.store import check_reachable, resolve_tracking_uri, sqlite_path

#: Seconds to wait for a tracking server to answer its health check before giving up.
CONNECT_TIMEOUT_S = 5.0


@contextlib.contextmanager
def _quick_http() -> Iterator[None]:
    """Lower the MLflow client's HTTP retries and timeout for one call, unless the user set them.

    Defaults are 7 retries with exponential backoff (minutes against a failing server).
    """
    overrides = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    }
    added = [k for k in overrides if k not in os.environ]
    os.environ.update({k: overrides[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def download_registered_policy(uri: str, tracking_uri: str | None = None, dst: str | Path | None = None) -> Path:
    """Download the registered artifact directory into ``dst`` (default: a new temporary folder)
    and return its path. A temporary folder created here is removed if the download fails;
    prefer :func:`load_registered_policy`, which also removes it after loading."""
    try:
        import mlflow
    except ImportError as exc:
        raise PolicyLoadError(f"loading {uri!r} needs mlflow: pip install 'chuck[all]'") from exc

    store = resolve_tracking_uri(tracking_uri)
    db = sqlite_path(store)
    if db is not None and not db.exists():
        # opening a missing SQLite store would create (and migrate) an empty one
        raise PolicyLoadError(
            f"cannot fetch {uri!r}: no MLflow store at {db} (nothing registered there; "
            "register with `chuck train-policy` or set MLFLOW_TRACKING_URI)"
        )
    try:
        check_reachable(store, timeout=CONNECT_TIMEOUT_S)
    except ConnectionError as exc:
        raise PolicyLoadError(f"cannot fetch {uri!r}: {exc}") from None
    name, ref = _parse(uri)
    owned = dst is None
    target = Path(tempfile.mkdtemp(prefix="chuck-policy-")) if dst is None else Path(dst)
    try:
        with _quick_http():
            # Resolved with an explicit client: mlflow's "models:/" artifact repository looks the
            # model up in the *default* registry whatever registry_uri is passed to
            # download_artifacts, and so creates ./mlflow.db (mlflow 3.x).
            client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
            version = client.get_model_version_by_alias(name, ref[1:]).version if ref.startswith("@") else ref
            source = client.get_model_version_download_uri(name, version)
            return Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=source, dst_path=str(target), tracking_uri=store, registry_uri=store
                )
            )
    except Exception as exc:  # noqa: BLE001 - MlflowException, missing alias, server down...
        if owned:
            shutil.rmtree(target, ignore_errors=True)
        raise PolicyLoadError(f"cannot fetch {uri!r} from MLflow store {store} ({type(exc).__name__}: {exc})") from None


def _parse(uri: str) -> tuple[str, str]:
    """``models:/NAME@ALIAS`` -> (NAME, "@ALIAS"); ``models:/NAME/VERSION`` -> (NAME, "VERSION")."""
    rest = uri[len("models:/") :].strip("/")
    if "@" in rest:
        name, alias = rest.rsplit("@", 1)
        if name and alias:
            return name, "@" + alias
    elif "/" in rest:
        name, version = rest.rsplit("/", 1)
        if name and version.isdigit():
            return name, version
    raise PolicyLoadError(f"cannot fetch {uri!r}: use 'models:/NAME@ALIAS' or 'models:/NAME/VERSION'")


def local_artifact(uri: str, tracking_uri: str | None = None) -> Path | None:
    """The artifact directory of registered policy ``uri`` when the store is a local SQLite file and the
    artifact a local directory, read from the database without MLflow; ``None`` otherwise (MLflow answers)."""

    db = sqlite_path(resolve_tracking_uri(tracking_uri))
    if db is None or not db.is_file():
        return None
    name, ref = _parse(uri)
    try:
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error:
        return None
    try:
        if ref.startswith("@"):
            found = con.execute(
                "SELECT version FROM registered_model_aliases WHERE name = ? AND alias = ?", (name, ref[1:])
            ).fetchall()
            if len(found) != 1:  # absent, or one per workspace: MLflow knows which
                return None
            version = int(found[0][0])
        else:
            version = int(ref)
        rows = con.execute(
            "SELECT storage_location, source, current_stage FROM model_versions WHERE name = ? AND version = ?",
            (name, version),
        ).fetchall()
    except (sqlite3.Error, ValueError, TypeError):  # another schema: MLflow reads it
        return None
    finally:
        con.close()
    if len(rows) != 1 or rows[0][2] == "Deleted_Internal":
        return None
    location = str(rows[0][0] or rows[0][1] or "")
    parsed = urllib.parse.urlparse(location)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        return None
    path = Path(urllib.parse.unquote(parsed.path))
    return path if (path / "policy.json").is_file() else None


def load_registered_policy(uri: str, tracking_uri: str | None = None) -> Any:
    """Load a registered policy (validated like any artifact): from where it lies in a local store
    (:func:`local_artifact`), else downloaded through MLflow into a folder removed after loading."""
    from chuck.policies.artifact import load_artifact

    local = local_artifact(uri, tracking_uri)
    if local is not None:
        return load_artifact(local)
    with tempfile.TemporaryDirectory(prefix="chuck-policy-") as d:
        return load_artifact(download_registered_policy(uri, tracking_uri, dst=d))
