"""Where chuck keeps its files: ``CHUCK_HOME`` (default ``~/.chuck``)."""

from __future__ import annotations

import os
from pathlib import Path


def chuck_home() -> Path:
    """The directory for history, Optuna storage and the default MLflow store (created on demand).

    Raises OSError naming ``CHUCK_HOME`` when the directory cannot be created or is not one (a
    regular file, an unwritable parent, ``HOME`` pointing nowhere).
    """
    raw = os.environ.get("CHUCK_HOME", "~/.chuck")
    try:
        home = Path(raw).expanduser()
    except RuntimeError as exc:  # no HOME and no password entry to find one in
        raise OSError(f"CHUCK_HOME is not set and the home directory is unknown ({exc})") from exc
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        where = "CHUCK_HOME" if "CHUCK_HOME" in os.environ else "the default CHUCK_HOME"
        why = "it is not a directory" if isinstance(exc, FileExistsError) else (exc.strerror or str(exc))
        raise OSError(f"{where} {home} is not a usable directory: {why}") from exc
    return home
