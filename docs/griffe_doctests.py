"""Griffe extension for the API reference: doctest examples as code, Sphinx roles as code spans.

The package's docstrings carry short doctest examples right after their summary (STYLE: "docstrings carry ...
a short ``>>>`` example"), outside any ``Examples:`` section. Markdown would read them as prose (and ``[1, 2]``
in an output line as a link), so this extension wraps each run of doctest lines — from a line starting with
``>>>`` to the next blank line — in a ``pycon`` fence, and drops ``# doctest:`` directives. Indented lines (inside
``Args:``/``Examples:`` sections, which griffe already parses) and existing fences are left alone.
Docstrings also use Sphinx cross-reference roles (``:class:`~energyarch.runtime.TermUpdate```), which Markdown
would print verbatim; they become code spans with the name Sphinx would show (``TermUpdate``).
Two more things Markdown would show wrongly: reStructuredText literal blocks (a paragraph ending in ``::``
followed by an indented block) become ``text`` fences with the ``::`` turned into ``:``; and private base
classes (``Bases: _Term``) are dropped from the class signature, since they are not part of the public API.
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


def fence_literal_blocks(text: str) -> str:
    """reST literal blocks at column 0 (``text::`` + blank line + indented lines) → ``text:`` + a fence."""
    lines = text.splitlines()
    out: list[str] = []
    in_fence = False
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        if in_fence or not line.rstrip().endswith("::") or line[:1].isspace():
            out.append(line)
            i += 1
            continue
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        if j == len(lines) or not lines[j][:1].isspace():  # no indented block follows: not a literal block
            out.append(line)
            i += 1
            continue
        head = line.rstrip()[:-2].rstrip()
        out += ([head + ":", ""] if head else []) + ["```text"]
        block = []
        while j < len(lines) and (not lines[j].strip() or lines[j][:1].isspace()):
            block.append(lines[j])
            j += 1
        while block and not block[-1].strip():
            block.pop()
        indent = min(len(b) - len(b.lstrip()) for b in block if b.strip())
        out += [b[indent:] for b in block] + ["```", ""]
        i = j
    return "\n".join(out)


class DoctestFences(Extension):
    """Fence free-standing doctest examples and literal blocks, flatten Sphinx roles in every docstring of the
    loaded objects, and hide private base classes."""

    def on_object(self, *, obj: Object, **kwargs: Any) -> None:
        _rewrite(obj)
        if obj.is_class:
            obj.bases = [b for b in obj.bases if not str(b).rsplit(".", 1)[-1].startswith("_")]

    def on_package(self, *, pkg: Object, **kwargs: Any) -> None:
        _rewrite(pkg)  # the root package is not passed to on_object


def _rewrite(obj: Object) -> None:
    if obj.docstring is None:
        return
    text = obj.docstring.value
    if ">>>" in text:
        text = fence_doctests(text)  # idempotent: fenced lines are left alone
    if "::" in text:
        text = fence_literal_blocks(text)
    if ":`" in text:
        text = sphinx_roles(text)
    obj.docstring.value = text
