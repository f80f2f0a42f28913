"""Where chuck keeps its files: ``CHUCK_HOME`` (default ``~/.chuck``)."""

from __future__ import annotations

import os
from pathlib import Path


def chuck_home() -> Path:
    """The directory for history, Optuna storage and the default MLflow store (created on demand)."""
    home = Path(os.environ.get("CHUCK_HOME", "~/.chuck")).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home
