"""Fetch a policy registered in MLflow (``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from chuck.loading import PolicyLoadError


def download_registered_policy(uri: str, tracking_uri: str | None = None) -> Path:
    """Download the registered artifact directory to a temporary folder and return its path."""
    try:
        import mlflow
    except ImportError as exc:
        raise PolicyLoadError(f"loading {uri!r} needs mlflow: pip install 'chuck[all]'") from exc
    from chuck.tracking import default_tracking_uri

    mlflow.set_tracking_uri(tracking_uri or mlflow.get_tracking_uri() or default_tracking_uri())
    dst = Path(tempfile.mkdtemp(prefix="chuck-policy-"))
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    except Exception as exc:  # noqa: BLE001 - MlflowException, missing alias, server down...
        raise PolicyLoadError(f"cannot fetch {uri!r} from MLflow ({type(exc).__name__}: {exc})") from None
