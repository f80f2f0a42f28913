"""The import graph of chuck's packages, drawn from the code's own imports.

    python experiments/import_graph.py            # mermaid diagram of the package graph, then any cycle
    python experiments/import_graph.py --modules  # module-level edges and module cycles instead

Reads every module's ``import``/``from ... import`` statements with ``ast`` (nothing is imported),
maps the mapped folders (envs/, policies/, training_zoo/) to ``chuck.envs``, ``chuck.policies``,
``chuck.zoo``, and counts an import at module top and one inside a function alike (a deferred
import is still a dependency); imports under ``if TYPE_CHECKING:`` never run and are left out. docs/design/architecture.md holds its output.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"chuck": "chuck", "envs": "chuck.envs", "policies": "chuck.policies", "training_zoo": "chuck.zoo"}


def modules() -> dict[str, Path]:
    """Every module of the distribution, by its import name."""
    out: dict[str, Path] = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [] if rel.name == "__init__" else [rel.name]
            parts = [*rel.parent.parts, *parts]
            out[".".join([package, *parts])] = path
    return out


def imports(path: Path, name: str) -> set[str]:
    """The chuck modules ``path`` imports (absolute and relative imports resolved)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(), str(path))
    typing_only = {  # imports under ``if TYPE_CHECKING:`` never run
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for stmt in block.body
        for n in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "chuck")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "chuck":
                continue
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def package_of(module: str, known: set[str]) -> str:
    """The subpackage a module belongs to (``chuck.core.optimizer`` -> ``chuck.core``)."""
    parts = module.split(".")
    if len(parts) >= 2 and ".".join(parts[:2]) in known:
        return ".".join(parts[:2])
    return parts[0]


def graph(level: str) -> dict[str, set[str]]:
    mods = modules()
    packages = {m for m, p in mods.items() if p.name == "__init__.py" and m.count(".") == 1}
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        src = name if level == "modules" else package_of(name, packages)
        for target in imports(path, name):
            while target not in mods and "." in target:
                target = target.rsplit(".", 1)[0]  # "from chuck.x import name": the module is chuck.x
            if target not in mods:
                continue
            dst = target if level == "modules" else package_of(target, packages)
            if dst != src:
                edges[src].add(dst)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    sys.setrecursionlimit(10_000)

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted({*edges, *(w for ws in edges.values() for w in ws)}):
        if v not in index:
            visit(v)
    return out


def mermaid(edges: dict[str, set[str]]) -> str:
    lines = ["graph TD"]
    for src in sorted(edges):
        for dst in sorted(edges[src]):
            lines.append(f"  {src.replace('.', '_')}[{src}] --> {dst.replace('.', '_')}[{dst}]")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--modules", action="store_true", help="module-level edges instead of packages")
    args = p.parse_args()
    edges = graph("modules" if args.modules else "packages")
    print(mermaid(edges))
    found = cycles(edges)
    for c in found:
        print("cycle:", " <-> ".join(c), file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
