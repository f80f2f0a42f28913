"""The built-in task families, in modules by domain (and, where a domain grows, by kind)."""

from __future__ import annotations

import importlib

#: The modules holding built-in families; each defines ``FAMILIES``, a list of Task subclasses.
MODULES = ("cv", "nlp", "rl", "rl_value", "tabular")


def builtin_families() -> list[type]:
    """Every built-in family class, in module order."""
    return [cls for name in MODULES for cls in importlib.import_module(f"chuck.zoo.families.{name}").FAMILIES]
