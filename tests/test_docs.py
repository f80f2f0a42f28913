"""The documentation builds (strict: broken links, bad docstrings and missing pages fail)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_docs_build_strict(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "not included in the" not in log, log  # every page is in the nav or deliberately left out of it
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    raw = re.findall(r":(?:class|func|meth|attr|data|mod):", api)
    assert not raw, f"Sphinx roles printed as markup in the API reference: {len(raw)}"
    assert 'class="autorefs autorefs-internal"' in api  # cross-references render as links
    assert "ChuckOptimizer" in api and "record_loss" in api  # built from docstrings
    assert "aa_control" in api and "harm_against_aa" in api  # chuck evaluate and its A/A control


def _policy_names(text: str) -> set[str]:
    return set(re.findall(r'`"([^"`]+)"`', text)) | ({"a path"} if "a path" in text else set())


def test_readme_and_docs_list_the_same_policies() -> None:
    readme = (ROOT / "README.md").read_text()
    bullet = readme.split("* `policy`:", 1)[1].split("\n* ", 1)[0]
    index = (ROOT / "docs" / "index.md").read_text()
    table = index.split("## Policies", 1)[1].split("\n## ", 1)[0]
    rows = "\n".join(line.split("|")[1] for line in table.splitlines() if line.startswith("| ") and "---" not in line)
    names = {"constant", "heuristic", "prior", "default", "a path", "models:/NAME@ALIAS"}
    assert _policy_names(bullet) == _policy_names(rows) == names


def test_user_docs_speak_of_the_product_not_of_its_tracker_or_tests() -> None:
    """Readers of the docs see neither the issue tracker nor the test files: statements stand on their own."""
    pattern = re.compile(r"\bissue\b|\blevers?\b|\bitem [0-9]|\btests/\S+\.py")
    found = [
        f"{path.relative_to(ROOT)}:{i}: {line.strip()}"
        for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, "\n".join(found)
