"""MLflow: the store, the decision logger and its spool, the decision timeline and ``chuck ui``.

Importing this package imports no MLflow; each module imports it where it is used.
"""

from chuck.tracking.schema import StoreSchemaError, check_store_schema
from chuck.tracking.store import (
    EXPERIMENT_KIND,
    check_reachable,
    default_tracking_uri,
    register_artifact,
    resolve_tracking_uri,
    setup,
    sqlite_path,
    tag_experiment_kind,
)

__all__ = [
    "EXPERIMENT_KIND",
    "StoreSchemaError",
    "check_reachable",
    "check_store_schema",
    "default_tracking_uri",
    "register_artifact",
    "resolve_tracking_uri",
    "setup",
    "sqlite_path",
    "tag_experiment_kind",
]
