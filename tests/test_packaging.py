"""Packaging: every package folder is listed, and the core imports only torch/numpy/gymnasium."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed() -> None:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    mapping = cfg["package-dir"]
    found = set()
    for pkg, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([pkg, *rel.parts]) if rel.parts else pkg)
    # subpackages of mapped folders that are themselves mapped are found twice; that is fine
    assert found <= listed, f"package folders missing from pyproject [tool.setuptools] packages: {sorted(found - listed)}"


CORE_PATH = """
import sys, torch
import chuck
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
for name in {policies!r}:
    # history=False: the run record written when a run ends is an edge (polars, imported then);
    # training itself must not need it
    opt = chuck.ChuckOptimizer(torch.optim.AdamW(model.parameters()), chuck.load_policy(name), model=model, history=False)
    for _ in range(25):
        loss = model(torch.randn(16, 4)).pow(2).mean()
        loss.backward(); opt.step(loss=loss); opt.zero_grad()
    opt.health()
heavy = [m for m in ("stable_baselines3", "mlflow", "optuna", "polars", "sklearn", "matplotlib") if m in sys.modules]
print("HEAVY", heavy)
"""


def test_core_path_imports_no_heavy_dependency() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CORE_PATH.format(policies=["constant", "heuristic", "default"])],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "HEAVY []" in out, out
