"""The README's two set-up commands are the ones CI and users run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- setup-commands -->\s*```bash\n(.*?)```", text, re.S)
    assert block, "README has no setup-commands block"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def test_readme_has_exactly_two_setup_commands() -> None:
    cmds = _readme_commands()
    assert len(cmds) == 2, cmds
    assert cmds[0].endswith("chuck demo")
    assert "pytest" in cmds[1]
    for c in cmds:
        assert "torch==2.13.0" in c, "torch must be pinned (an unpinned torch pulls CUDA wheels)"


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert _readme_commands()[1] in ci


def _python_block(path: Path, anchor: str) -> list[str]:
    """The first python code block after ``anchor`` in a markdown file, as lines."""
    text = path.read_text()
    block = re.search(r"```python\n(.*?)```", text[text.index(anchor) :], re.S)
    assert block, f"no python block after {anchor!r} in {path.name}"
    return block.group(1).splitlines()


def _loop(lines: list[str]) -> list[str]:
    """From the optimizer's construction to the observe call: the part a user copies."""
    start = next(i for i, line in enumerate(lines) if "chuck.ChuckOptimizer(" in line)
    end = next(i for i, line in enumerate(lines) if "opt.observe(" in line)
    return lines[start : end + 1]


def test_readme_and_docs_show_the_same_loop_with_total_steps() -> None:
    """docs/index.md called observe after the loop, the README inside it, and the README left out
    total_steps, which the policy uses to anneal the lr at the end of a run."""
    readme = _loop(_python_block(ROOT / "README.md", "## Use"))
    docs = _loop(_python_block(ROOT / "docs" / "index.md", "## Two lines in your loop"))
    assert readme == docs
    assert any("total_steps=" in line for line in readme)


def test_readme_says_where_to_read_the_effective_lr() -> None:
    from chuck.core.actions import EFFECTIVE_LR_KEY

    assert f'group["{EFFECTIVE_LR_KEY}"]' in (ROOT / "README.md").read_text()


def test_the_readme_docs_command_installs_mkdocs_and_its_output_is_ignored() -> None:
    """The README's docs build ran right after the set-up that installs [all], which has no mkdocs."""
    import tomllib

    text = (ROOT / "README.md").read_text()
    cmd = next(m.group(1) for m in re.finditer(r"`([^`]*mkdocs build[^`]*)`", text))
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    installed = set()
    # what a user has after the main job's set-up (the first command) and the docs command
    for spec in re.findall(r'-e "\.\[([^\]]+)\]"', " ".join([_readme_commands()[0], cmd])):
        installed |= set(spec.split(","))

    def requirements(extra: str) -> set[str]:
        out = set()
        for req in extras.get(extra, []):
            name = re.split(r"[<>=\[ ]", req, maxsplit=1)[0]
            nested = re.match(r"chuck\[(.*)\]", req)
            out |= set().union(*(requirements(e) for e in nested.group(1).split(","))) if nested else {name}
        return out

    assert "mkdocs" in set().union(*(requirements(e) for e in installed)), cmd
    assert any(line.strip() in ("site/", "/site/") for line in (ROOT / ".gitignore").read_text().splitlines())
