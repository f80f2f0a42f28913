"""griffe extension: Sphinx cross-reference roles in docstrings become links in the API reference.

chuck's docstrings use the Google style with Sphinx roles for cross-references
(``:class:`ActionSpec```, ``:func:`chuck.tune```, ``:meth:`~Controller.act_external```), which
mkdocstrings would print as raw markup. Once griffe has loaded the package, every role is resolved
in the scope of the object whose docstring holds it (its module's imports and members, then its
parents') and replaced by an optional autorefs cross-reference: a link where the target is on a
page of the site, the name in code font where it is not (no warning: private helpers are not
rendered, and the reference still reads).
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

#: ``:role:`target``` and ``:role:`~dotted.target``` (the ``~`` shows the last component only).
ROLE = re.compile(r":(?:class|func|meth|attr|data|mod|exc|obj|const|py:\w+):`(~?)([\w.]+)(?:\(\))?`")


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles in every docstring of a loaded package into autorefs references."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        for obj in _walk(pkg):
            if obj.docstring is not None and ":" in obj.docstring.value:
                obj.docstring.value = ROLE.sub(lambda m, o=obj: _reference(o, m), obj.docstring.value)


def _walk(obj: griffe.Object) -> list[griffe.Object]:
    out = [obj]
    for member in obj.members.values():
        if not member.is_alias:
            out.extend(_walk(member))  # type: ignore[arg-type]
    return out


def _reference(obj: griffe.Object, match: re.Match[str]) -> str:
    short, target = match.group(1) == "~", match.group(2)
    title = target.rsplit(".", 1)[-1] if short else target
    identifier = _resolve(obj, target)
    return f'<autoref identifier="{html.escape(identifier)}" optional><code>{html.escape(title)}</code></autoref>'


def _resolve(obj: griffe.Object, target: str) -> str:
    """The full path of ``target`` seen from ``obj``'s scope (itself when it cannot be resolved)."""
    head, _, rest = target.partition(".")
    scope: griffe.Object | None = obj if obj.is_class or obj.is_module else obj.parent
    while scope is not None:
        try:
            full = scope.resolve(head)
        except griffe.NameResolutionError:
            scope = scope.parent
            continue
        return f"{full}.{rest}" if rest else full
    return target
