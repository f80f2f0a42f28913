"""MLflow set-up shared by meta-training, the demo, tuning, the decision logger and policy loading.

Default backend: a local SQLite file, ``sqlite:///$CHUCK_HOME/mlflow.db``, with
artifacts under ``$CHUCK_HOME/mlartifacts`` (no server). Any tracking URI works:
pass one, or set ``MLFLOW_TRACKING_URI``.

:func:`resolve_tracking_uri` is the single rule for which store chuck talks to, so
that ``load_policy("models:/NAME@ALIAS")`` in a fresh process finds what
``chuck train-policy`` registered. It never consults ``mlflow.get_tracking_uri()``:
that never returns None (so a fallback after it never ran) and its default is a
``mlflow.db`` in the current directory, which it creates.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from typing import Any

from chuck.core.home import chuck_home
from chuck.tracking.schema import check_store_schema, sqlite_path

#: The experiment kind MLflow 3 opens on its runs view (not the GenAI overview).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def _mlflow():
    try:
        import mlflow
    except ImportError as exc:  # pragma: no cover - mlflow is in chuck[all]
        raise ImportError("MLflow tracking needs mlflow: pip install 'chuck[all]'") from exc
    return mlflow


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """The store chuck uses: ``tracking_uri`` if given, else ``$MLFLOW_TRACKING_URI``, else
    ``sqlite:///$CHUCK_HOME/mlflow.db``. ``CHUCK_HOME`` is only touched in the last case."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{chuck_home() / 'mlflow.db'}"


def default_tracking_uri() -> str:
    """:func:`resolve_tracking_uri` with nothing given (kept for existing callers)."""
    return resolve_tracking_uri(None)


#: Schemes of the stores every MLflow install has (``sqlite`` and the other databases with SQLAlchemy,
#: which MLflow requires): accepted without importing MLflow, which takes seconds.
BUILTIN_SCHEMES = ("http", "https", "file", "sqlite", "postgresql", "mysql", "mssql")


def check_tracking_uri(uri: str) -> str:
    """``uri`` if MLflow has a store for its scheme; otherwise ValueError saying so in one line.

    A URI no store answers to (``foo://bar``, a typo in ``MLFLOW_TRACKING_URI``) is a mistake to
    report at once, not an outage to wait out. The schemes of MLflow's own stores
    (:data:`BUILTIN_SCHEMES`) are accepted as they are; any other asks MLflow's store registry
    (plugins included), which imports MLflow.
    """
    if re.match(rf"^({'|'.join(BUILTIN_SCHEMES)})://", uri):
        return uri
    try:
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry as registry
    except ImportError:  # pragma: no cover - MLflow moved its registry: MLflow reports the URI itself later
        return uri
    try:
        registry.get_store_builder(uri)
    except Exception:  # noqa: BLE001 - MLflow's UnsupportedModelRegistryStoreURIException, a page long
        source = " (from $MLFLOW_TRACKING_URI)" if os.environ.get("MLFLOW_TRACKING_URI") == uri else ""
        scheme = uri.split(":", 1)[0] if ":" in uri else ""
        raise ValueError(
            f"MLflow tracking URI {redact(uri)!r}{source} names no MLflow store (scheme {scheme!r}): use "
            "http(s)://HOST:PORT, sqlite:///PATH, file:PATH or postgresql://..."
        ) from None
    return uri


def redact(uri: str) -> str:
    """``uri`` without the password of its ``user:password@`` part, for messages."""
    return re.sub(r"(//[^/:@]*):[^/@]*@", r"\1:***@", uri)


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Raise ``ConnectionError`` if an http(s) tracking server does not answer within ``timeout``.

    Any HTTP answer counts as reachable (a proxy may not serve ``/health``); only a refused,
    reset or timed-out connection does not. Other schemes are not checked. The MLflow client
    would otherwise retry a dead server with exponential backoff for minutes.
    """
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            pass
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConnectionError(f"MLflow tracking server {redact(uri)} is unreachable ({reason})") from None


def setup(tracking_uri: str | None = None, experiment: str = "chuck") -> Any:
    """Point MLflow at ``tracking_uri`` (default: the local SQLite store) and select ``experiment``.

    For a SQLite store the experiment's artifacts go next to the database, not into
    the current directory. The experiment carries :data:`EXPERIMENT_KIND`, also when it was
    created elsewhere (MLflow 3 then opens it on its runs view). Returns the ``mlflow`` module.
    """
    uri = resolve_tracking_uri(tracking_uri)
    check_store_schema(uri)  # before MLflow, whose message for a newer store's schema gives the wrong fix
    mlflow = _mlflow()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # models are registered (and looked up) in the same store
    if mlflow.get_experiment_by_name(experiment) is None:
        location = None
        if (db := sqlite_path(uri)) is not None:
            location = (db.parent / "mlartifacts" / experiment).resolve().as_uri()
        try:
            mlflow.create_experiment(experiment, artifact_location=location, tags=dict([EXPERIMENT_KIND]))
        except mlflow.exceptions.MlflowException:
            if mlflow.get_experiment_by_name(experiment) is None:
                raise  # not a concurrent creation of the same experiment (several ranks or workers)
    exp = mlflow.set_experiment(experiment)
    tag_experiment_kind(mlflow.MlflowClient(tracking_uri=uri), exp.experiment_id)
    return mlflow


def ensure_experiment(client: Any, tracking_uri: str, experiment: str) -> str:
    """The id of ``experiment`` in the store ``client`` talks to, created (as :func:`setup` does) if absent.

    Client calls only: the MLflow decision logger creates its run from its sender thread when the
    server comes back, where the fluent API's process-wide state must not change.
    """
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        location = None
        if (db := sqlite_path(tracking_uri)) is not None:
            location = (db.parent / "mlartifacts" / experiment).resolve().as_uri()
        try:
            return str(client.create_experiment(experiment, artifact_location=location, tags=dict([EXPERIMENT_KIND])))
        except Exception:  # noqa: BLE001 - another process created it first (several ranks or workers)
            exp = client.get_experiment_by_name(experiment)
            if exp is None:
                raise
    tag_experiment_kind(client, exp.experiment_id)
    return str(exp.experiment_id)


def create_run(client: Any, tracking_uri: str, new_run: dict[str, Any]) -> str:
    """Create the run ``new_run`` describes (``experiment``, ``run_name``, ``start_time`` in ms); its id."""
    experiment_id = ensure_experiment(client, tracking_uri, new_run["experiment"])
    run = client.create_run(experiment_id, start_time=new_run.get("start_time"), run_name=new_run.get("run_name"))
    return str(run.info.run_id)


def tag_experiment_kind(client: Any, experiment_id: str) -> None:
    """Give an experiment created elsewhere chuck's kind tag (MLflow 3 then opens it on the runs view).

    Idempotent and safe when several processes (DDP ranks, evaluation workers) open the same
    experiment at once: the SQLite store inserts the tag, so the loser of that race gets a unique
    constraint error while the tag it wanted is already there.
    """
    if EXPERIMENT_KIND[0] in (client.get_experiment(experiment_id).tags or {}):
        return
    try:
        client.set_experiment_tag(experiment_id, *EXPERIMENT_KIND)
    except Exception:  # noqa: BLE001 - MlflowException wrapping the store's IntegrityError
        if EXPERIMENT_KIND[0] not in (client.get_experiment(experiment_id).tags or {}):
            raise


def register_artifact(
    run_id: str, artifact_path: str, name: str, alias: str | None = None, tracking_uri: str | None = None
) -> str:
    """Register a run's artifact directory as a new version of model ``name``; set ``alias``.

    Returns the version. Works for any artifact directory (chuck policies are not
    MLflow "flavors": they load with chuck.load_policy("models:/NAME@ALIAS")). The
    registry is the tracking store itself: ``tracking_uri``, else the one :func:`setup` selected.
    """
    mlflow = _mlflow()
    uri = tracking_uri or mlflow.get_tracking_uri()
    check_store_schema(uri)
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        client.get_registered_model(name)
    except Exception:  # noqa: BLE001 - MlflowException when absent
        client.create_registered_model(name, description="chuck meta-policy (load with chuck.load_policy)")
    source = f"{client.get_run(run_id).info.artifact_uri}/{artifact_path}"
    mv = client.create_model_version(name, source=source, run_id=run_id)
    if alias:
        client.set_registered_model_alias(name, alias, mv.version)
    return str(mv.version)
