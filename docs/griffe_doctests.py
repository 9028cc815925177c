"""Griffe extension for the API reference: doctest examples as code, Sphinx roles as code spans.

The package's docstrings carry short doctest examples right after their summary (STYLE: "docstrings carry ...
a short ``>>>`` example"), outside any ``Examples:`` section. Markdown would read them as prose (and ``[1, 2]``
in an output line as a link), so this extension wraps each run of doctest lines — from a line starting with
``>>>`` to the next blank line — in a ``pycon`` fence, and drops ``# doctest:`` directives. Indented lines (inside
``Args:``/``Examples:`` sections, which griffe already parses) and existing fences are left alone.
Docstrings also use Sphinx cross-reference roles (``:class:`~energyarch.runtime.TermUpdate```), which Markdown
would print verbatim; they become code spans with the name Sphinx would show (``TermUpdate``).
Loaded by mkdocstrings (``extensions:`` in mkdocs.yml); it changes only what the docs show, never the code.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

_DIRECTIVE = re.compile(r"\s*#\s*doctest:.*$")
_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|mod|data|exc|obj|const):`(~?)([^`]+)`")


def sphinx_roles(text: str) -> str:
    """``:role:`~a.b.C``` → ```C```, ``:role:`a.b.C``` → ```a.b.C```."""
    return _ROLE.sub(lambda m: "`" + (m.group(2).rsplit(".", 1)[-1] if m.group(1) else m.group(2)) + "`", text)


def fence_doctests(text: str) -> str:
    """Wrap column-0 doctest runs of ``text`` in fenced ``pycon`` blocks."""
    out: list[str] = []
    in_fence = in_doctest = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        if in_doctest and not line.strip():
            out += ["```", ""]
            in_doctest = False
            continue
        if not in_fence and not in_doctest and line.startswith(">>>"):
            if out and out[-1].strip():
                out.append("")
            out.append("```pycon")
            in_doctest = True
        out.append(_DIRECTIVE.sub("", line) if in_doctest else line)
    if in_doctest:
        out.append("```")
    return "\n".join(out)


class DoctestFences(Extension):
    """Fence free-standing doctest examples and flatten Sphinx roles in every docstring of the loaded objects."""

    def on_object(self, *, obj: Object, **kwargs: Any) -> None:
        _rewrite(obj)

    def on_package(self, *, pkg: Object, **kwargs: Any) -> None:
        _rewrite(pkg)        # the root package is not passed to on_object


def _rewrite(obj: Object) -> None:
    if obj.docstring is None:
        return
    text = obj.docstring.value
    if ">>>" in text:
        text = fence_doctests(text)      # idempotent: fenced lines are left alone
    if ":`" in text:
        text = sphinx_roles(text)
    obj.docstring.value = text
