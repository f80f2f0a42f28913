"""MLflow set-up shared by meta-training, the demo, tuning and the decision logger.

Default backend: a local SQLite file, ``sqlite:///$CHUCK_HOME/mlflow.db``, with
artifacts under ``$CHUCK_HOME/mlartifacts`` (no server). Any tracking URI works:
pass one, or set ``MLFLOW_TRACKING_URI``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from chuck.home import chuck_home


def _mlflow():
    try:
        import mlflow
    except ImportError as exc:  # pragma: no cover - mlflow is in chuck[all]
        raise ImportError("MLflow tracking needs mlflow: pip install 'chuck[all]'") from exc
    return mlflow


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{chuck_home() / 'mlflow.db'}"


def setup(tracking_uri: str | None = None, experiment: str = "chuck") -> Any:
    """Point MLflow at ``tracking_uri`` (default: the local SQLite store) and select ``experiment``.

    For a SQLite store the experiment's artifacts go next to the database, not into
    the current directory. Returns the ``mlflow`` module.
    """
    mlflow = _mlflow()
    uri = tracking_uri or default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        location = None
        if uri.startswith("sqlite:///"):
            db = Path(uri[len("sqlite:///"):])
            location = (db.parent / "mlartifacts" / experiment).resolve().as_uri()
        mlflow.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment)
    return mlflow


def register_artifact(run_id: str, artifact_path: str, name: str, alias: str | None = None) -> str:
    """Register a run's artifact directory as a new version of model ``name``; set ``alias``.

    Returns the version. Works for any artifact directory (chuck policies are not
    MLflow "flavors": they load with chuck.load_policy("models:/NAME@ALIAS")).
    """
    mlflow = _mlflow()
    client = mlflow.MlflowClient()
    try:
        client.get_registered_model(name)
    except Exception:  # noqa: BLE001 - MlflowException when absent
        client.create_registered_model(name, description="chuck meta-policy (load with chuck.load_policy)")
    source = f"{client.get_run(run_id).info.artifact_uri}/{artifact_path}"
    mv = client.create_model_version(name, source=source, run_id=run_id)
    if alias:
        client.set_registered_model_alias(name, alias, mv.version)
    return str(mv.version)
