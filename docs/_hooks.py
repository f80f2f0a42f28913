"""mkdocs hook: stage the package in its installed layout for the API reference.

pyproject maps envs/ -> chuck.envs, policies/ -> chuck.policies and training_zoo/ -> chuck.zoo;
griffe (mkdocstrings) reads sources by path and cannot follow that mapping. This copies the
sources into .apisrc/chuck/ in the layout a wheel has (copies, not symlinks: griffe resolves
links back to the original folder), and mkdocs.yml points griffe at it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mkdocs.plugins import event_priority

ROOT = Path(__file__).resolve().parents[1]
MAPPING = {"envs": "envs", "policies": "policies", "zoo": "training_zoo"}


@event_priority(100)  # before mkdocstrings reads its paths (hooks otherwise run after plugins)
def on_config(config, **kwargs):
    stage = ROOT / ".apisrc" / "chuck"
    if stage.parent.exists():
        shutil.rmtree(stage.parent)
    ignore = shutil.ignore_patterns("__pycache__", "artifacts")
    shutil.copytree(ROOT / "chuck", stage, ignore=ignore)
    for name, folder in MAPPING.items():
        shutil.copytree(ROOT / folder, stage / name, ignore=ignore)
    return config
