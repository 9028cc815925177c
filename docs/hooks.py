"""MkDocs hooks: generate the catalog and benchmark pages at build time, so they cannot drift.

- the footer: the version from ``pyproject.toml``, the license and the paper to cite.
- ``catalog.md``: the markers ``<!-- energyarch:catalog-tables -->`` and ``<!-- energyarch:catalog-entries -->``
  are replaced by :func:`energyarch.catalog.tables_markdown` (Tables 19, 20 and "beyond", regenerated from
  ``catalog/*.toml``) and by one section per entry: its declaration, what the compiler derived and why, the
  float64 check against ``torch.func.grad`` (:func:`energyarch.verify`) and, for the paper's rows, the comparison
  with the printed formula (:func:`energyarch.catalog.compare_with_paper`).
- ``benchmarks.md``: the marker ``<!-- energyarch:benchmark-results -->`` is replaced by every
  ``benchmarks/results/**/*.md`` file as committed (or a note that none is there): numbers are never written by hand.
  Plots ``benchmarks/results/NAME*.png`` are shown under the results file ``NAME.md``.

- ``training.md``: the marker ``<!-- energyarch:config-fields -->`` is replaced by one table per config class
  (``TrainConfig``, ``ModelConfig``): every field, its default and the comment written next to it in the source.
- ``write-your-own-energy.md``: ``<!-- energyarch:expr-functions -->`` becomes the table of every function the
  expression parser accepts (``energyarch.expr.FUNCTIONS``, described by ``FUNCTION_DOCS``) and
  ``<!-- energyarch:expr-limits -->`` the parser's limits and the symbolic path's budget, read from the code.
- notebook pages: links written in a notebook's Markdown cells for Jupyter (``02_catalog.ipynb``,
  ``../docs/training.md#configs``) are rewritten to the site's pages, and a button to download the ``.ipynb`` is
  put at the top. mkdocs does not validate links inside rendered notebooks, so a link that names no file of the
  site stops the build here (``scripts/check_site.py`` checks every link of the built site as well).

A missing marker, an unloadable catalog or a failing check stops the build: the pages would otherwise lie.
"""

from __future__ import annotations

import dataclasses
import html
import logging
import os
import re
import sys
from pathlib import Path

from mkdocs.exceptions import PluginError

log = logging.getLogger("mkdocs.hooks.energyarch")

CATALOG_TABLES = "<!-- energyarch:catalog-tables -->"
CATALOG_ENTRIES = "<!-- energyarch:catalog-entries -->"
BENCHMARK_RESULTS = "<!-- energyarch:benchmark-results -->"
CONFIG_FIELDS = "<!-- energyarch:config-fields -->"
EXPR_FUNCTIONS = "<!-- energyarch:expr-functions -->"
EXPR_LIMITS = "<!-- energyarch:expr-limits -->"

_ROOT: Path | None = None


def on_config(config):
    """Document and execute this checkout: its root goes first on sys.path (for this hook) and on PYTHONPATH (for
    the kernels that execute the notebooks), whether or not the package is installed."""
    global _ROOT
    _ROOT = Path(config.config_file_path).resolve().parent
    if str(_ROOT) not in sys.path:
        sys.path.insert(0, str(_ROOT))
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(_ROOT) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(_ROOT), *paths])
    config["copyright"] = _footer()
    return config


def _footer() -> str:
    """The site footer: the version of this checkout (``pyproject.toml``), the license and what to cite."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    project = tomllib.loads((_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return (
        f"energyarch {project['version']} · MIT License · please cite Hu, Zou &amp; Xu, <em>Hyper-SET: Designing "
        f"Transformers via Hyperspherical Energy Minimization</em>, ICLR 2026 "
        f'(<a href="https://arxiv.org/abs/2502.11646">arXiv:2502.11646</a>)'
    )


def on_files(files, config):
    """Serve the committed benchmark plots (``benchmarks/results/*.png``) under ``benchmark-plots/``."""
    from mkdocs.structure.files import File

    for png in _result_plots():
        files.append(File.generated(config, f"benchmark-plots/{png.name}", abs_src_path=str(png)))
    return files


def _result_plots() -> list[Path]:
    return sorted((_ROOT / "benchmarks" / "results").glob("*.png")) if _ROOT is not None else []


def on_page_content(html_text: str, page, config, files) -> str:
    if page.file.src_uri.endswith(".ipynb"):
        return _download_button(page) + _rewrite_notebook_links(html_text, page, config, files)
    return html_text


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri == "catalog.md":
        return _catalog_page(markdown)
    if page.file.src_uri == "benchmarks.md":
        return _benchmarks_page(markdown)
    if page.file.src_uri == "write-your-own-energy.md":
        return _expression_page(markdown)
    if page.file.src_uri == "training.md":
        _require(markdown, CONFIG_FIELDS, "training.md")
        return markdown.replace(CONFIG_FIELDS, _config_fields())
    return markdown


# ---------------------------------------------------------------------------------------------------------------
# expressions
# ---------------------------------------------------------------------------------------------------------------


def _expression_page(markdown: str) -> str:
    for marker in (EXPR_FUNCTIONS, EXPR_LIMITS):
        _require(markdown, marker, "write-your-own-energy.md")
    import importlib

    expr = importlib.import_module("energyarch.expr")
    derive = importlib.import_module("energyarch.derive")  # the module (energyarch.derive is also a function)

    docs = getattr(expr, "FUNCTION_DOCS", {})
    missing = sorted(set(expr.FUNCTIONS) - set(docs))
    if missing:
        raise PluginError(
            f"energyarch.expr.FUNCTION_DOCS has no line for {missing}: the expression page lists "
            f"every allowed function with its meaning"
        )
    rows = ["| function | meaning |", "|---|---|"]
    rows += [f"| `{name}(x)` | {_plain(docs[name])} |" for name in sorted(expr.FUNCTIONS)]
    constants = ", ".join(f"`{c}`" for c in sorted(getattr(expr, "CONSTANTS", {})))
    functions = "\n".join(rows) + (f"\n\nConstants: {constants}." if constants else "")
    limits = ["| limit | value |", "|---|---|"]
    limits += [f"| parser: {_plain(k.replace('_', ' '))} | {v:g} |" for k, v in getattr(expr, "LIMITS", {}).items()]
    budget = getattr(derive, "SYMBOLIC_BUDGET", None)
    if budget is None:  # where the derivation keeps it after the split into energyarch.derivation
        try:
            from energyarch.derivation.core import SYMBOLIC_BUDGET as budget
        except ImportError:
            budget = None
    if not getattr(expr, "LIMITS", None) or not budget:
        raise PluginError(
            "the expression page lists the parser's LIMITS (energyarch.expr) and the symbolic budget "
            "(SYMBOLIC_BUDGET, energyarch.derive or energyarch.derivation.core); one was not found"
        )
    limits += [f"| symbolic path: {_plain(k.replace('_', ' '))} | {v:g} |" for k, v in budget.items()]
    markdown = markdown.replace(EXPR_FUNCTIONS, functions)
    return markdown.replace(EXPR_LIMITS, "\n".join(limits))


# ---------------------------------------------------------------------------------------------------------------
# config fields
# ---------------------------------------------------------------------------------------------------------------


def _config_fields() -> str:
    """A table per config dataclass: key, default, and the comment beside the field in the source (the one place
    the meaning is written), so the guide lists every key and cannot drift from the code."""
    from energyarch.models.config import ModelConfig
    from energyarch.train.config import TrainConfig

    parts = []
    for cls, table in ((TrainConfig, "top level"), (ModelConfig, "`[model]`")):
        comments = _field_comments(cls)
        rows = [
            f"**`{cls.__name__}`** ({table}, `{cls.__module__}`)",
            "",
            "| key | default | meaning |",
            "|---|---|---|",
        ]
        for f in dataclasses.fields(cls):
            if f.name.startswith("_"):
                continue
            if f.default is not dataclasses.MISSING:
                default = repr(f.default)
            elif f.default_factory is not dataclasses.MISSING:
                default = repr(f.default_factory()) if f.name != "model" else "`[model]` table"
            else:
                default = "required"
            if not default.startswith("`"):
                default = "`" + default.replace("|", "\\|") + "`"
            meaning = comments.get(f.name)
            if not meaning:
                raise PluginError(
                    f"{cls.__name__}.{f.name} has no comment in {cls.__module__}: write one beside "
                    f"the field (it is the key's documentation on the training page)"
                )
            rows.append(f"| `{f.name}` | {default} | {_plain(meaning)} |")
        parts.append("\n".join(rows))
    return "\n\n".join(parts)


def _field_comments(cls) -> dict[str, str]:
    """``name: type = default  # comment`` (and comment-only continuation lines) → {name: comment}."""
    import ast
    import inspect
    import io
    import tokenize

    source = inspect.getsource(inspect.getmodule(cls))
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = source.splitlines()
    node = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    fields = [n for n in node.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]
    out = {}
    for k, f in enumerate(fields):
        stop = fields[k + 1].lineno if k + 1 < len(fields) else node.end_lineno + 1
        text = [comments[f.end_lineno]] if f.end_lineno in comments else []
        for ln in range(f.end_lineno + 1, stop):
            if ln in comments and lines[ln - 1].lstrip().startswith("#") and not comments[ln].startswith("-"):
                text.append(comments[ln])
            else:
                break
        out[f.target.id] = " ".join(text)
    return out


# ---------------------------------------------------------------------------------------------------------------
# notebooks
# ---------------------------------------------------------------------------------------------------------------

_HREF = re.compile(r'(<a\s[^>]*?\bhref=")([^"]*)(")')
_DOWNLOAD_ICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24"><path d="M5 20h14v-2H5m14-9h-4V3H9v6H5l7 '
    '7z"/></svg>'
)  # Material Design Icons "download" (Apache-2.0), as bundled with the theme


def _download_button(page) -> str:
    """A download link for the notebook; mkdocs-jupyter (``include_source: true``) copies the ``.ipynb`` next to
    the page's ``index.html``."""
    name = Path(page.file.abs_src_path).name
    return (
        f'<a href="{html.escape(name)}" download class="md-content__button md-icon ea-download" '
        f'title="Download {html.escape(name)} (stored without outputs)">{_DOWNLOAD_ICON}</a>\n'
    )


def _rewrite_notebook_links(html_text: str, page, config, files) -> str:
    """Map each relative link of a rendered notebook from the file it names (relative to the notebook's real
    folder, ``notebooks/``, as Jupyter resolves it) to the URL of that file's page on the site."""
    from mkdocs.utils import get_relative_url

    folder = Path(page.file.abs_src_path).resolve().parent
    by_path = {Path(f.abs_src_path).resolve(): f for f in files if f.abs_src_path}

    def rewrite(match: re.Match) -> str:
        href = html.unescape(match.group(2))
        path, _, fragment = href.partition("#")
        if not path or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:|^/", path):
            return match.group(0)  # in-page anchor, another site, mailto:, absolute path
        target = by_path.get((folder / path).resolve())
        if target is None:
            raise PluginError(
                f"{page.file.src_uri}: the link {href!r} names no file of the site "
                f"(resolved against {folder}); write it relative to the notebook, e.g. "
                f"'02_catalog.ipynb' or '../docs/training.md'"
            )
        url = get_relative_url(target.url, page.url) + (f"#{fragment}" if fragment else "")
        return match.group(1) + html.escape(url) + match.group(3)

    return _HREF.sub(rewrite, html_text)


# ---------------------------------------------------------------------------------------------------------------
# catalog
# ---------------------------------------------------------------------------------------------------------------


def _require(markdown: str, marker: str, page: str) -> None:
    if markdown.count(marker) != 1:
        raise PluginError(f"docs/{page} must contain the marker {marker} exactly once (docs/hooks.py fills it in)")


def _catalog_page(markdown: str) -> str:
    for marker in (CATALOG_TABLES, CATALOG_ENTRIES):
        _require(markdown, marker, "catalog.md")
    try:
        from energyarch import catalog
    except ImportError as err:  # the package is a dependency of the docs: a broken import is a broken build
        raise PluginError(f"cannot import energyarch.catalog to generate the catalog page: {err}") from err
    directory = _ROOT / "catalog"
    try:
        tables = catalog.tables_markdown(directory)
        entries = catalog.load_catalog(directory)
        sections = [_entry_section(catalog, entry) for entry in entries.values()]
    except Exception as err:  # noqa: BLE001 - any failure means the page cannot be generated truthfully
        raise PluginError(f"generating the catalog page from {directory} failed: {type(err).__name__}: {err}") from err
    tables = re.sub(r"\A# [^\n]*\n+", "", tables)  # the page has its own title
    index = ["| name | operator | family | where | pattern |", "|---|---|---|---|---|"]
    for e in entries.values():
        where = f"Table {e.table}, row {e.row}" if e.in_paper else f"beyond the paper, row {e.row}"
        index.append(f"| [`{e.name}`](#{e.name}) | {_plain(e.title)} | {e.family} | {where} | {e.pattern} |")
    log.info("catalog page: %d entries from %s", len(entries), directory)
    tables = _split_wide_tables(tables, keep=4)
    tables = f'<div class="ea-catalog-tables" markdown>\n\n{tables}\n\n</div>'
    markdown = markdown.replace(CATALOG_TABLES, "\n".join(index) + "\n\n" + tables)
    return markdown.replace(CATALOG_ENTRIES, "\n\n".join(sections))


def _split_wide_tables(markdown: str, keep: int) -> str:
    """Split each Markdown table of more than ``keep + 2`` columns in two, both led by the first column: the
    declaration (the first ``keep`` columns) and the rest (the derived operator, the paper's, the comparison),
    so that Tables 19-20 fit a 1300 px window instead of scrolling sideways."""
    cell = re.compile(r"(?<!\\)\|")
    out, block = [], []

    def flush():
        rows = [[c.strip() for c in cell.split(line.strip())[1:-1]] for line in block]
        if rows and len(rows[0]) > keep + 2 and all(len(r) == len(rows[0]) for r in rows):
            for cols in (range(keep), [0, *range(keep, len(rows[0]))]):
                out.extend("| " + " | ".join(r[c] for c in cols) + " |" for r in rows)
                out.append("")
        else:
            out.extend(block)
        block.clear()

    for line in markdown.splitlines():
        if line.lstrip().startswith("|"):
            block.append(line)
            continue
        if block:
            flush()
        out.append(line)
    if block:
        flush()
    return "\n".join(out)


def _plain(text: str, *, squash: bool = True) -> str:
    """Prose from a TOML file as literal markdown text (no emphasis, links, HTML or math by accident)."""
    text = html.escape(" ".join(text.split()) if squash else text, quote=False)
    return re.sub(r"([\\`*_\[\]|$#])", r"\\\1", text)


def _with_math(text: str) -> str:
    """Prose with ``$...$`` spans: the prose as literal text, each span as inline LaTeX for MathJax."""
    parts = re.split(r"(?<!\\)\$([^$]+)\$", " ".join(text.split()))
    return "".join(
        f'<span class="arithmatex">\\({html.escape(p, quote=False)}\\)</span>' if k % 2 else _plain(p, squash=False)
        for k, p in enumerate(parts)
    )


def _paragraphs(text: str) -> str:
    """Notes of a catalog entry: paragraphs of prose, with ``$...$`` rendered as LaTeX."""
    return "\n\n".join(_with_math(p) for p in re.split(r"\n\s*\n", text.strip()) if p.strip())


def _entry_section(catalog, entry) -> str:
    import energyarch as ea
    from energyarch.derive import derive

    d = 64
    step = entry.compile(d=d)
    dv = derive(entry.term(d), d)
    report = ea.verify(step, raise_on_fail=False)
    if not report.ok:
        raise PluginError(f"catalog entry {entry.name!r} fails verification:\n{report}")
    if dv.pattern != entry.pattern:
        raise PluginError(
            f"catalog entry {entry.name!r} declares pattern {entry.pattern!r}, compiler finds {dv.pattern!r}"
        )
    where = f"Table {entry.table}, row {entry.row}" if entry.in_paper else f"beyond the paper, row {entry.row}"
    lines = [
        f"### {_plain(entry.title)} {{#{entry.name}}}",
        "",
        f'<p class="ea-entry-meta"><code>{entry.name}</code> · {entry.family} · {where} · '
        f"pattern <em>{html.escape(dv.pattern)}</em> · {dv.path} path</p>",
        "",
        f"**Derivation.** {_plain(dv.reason)}",
        "",
        "$$",
        dv.latex,
        "$$",
        "",
        f"**Check** (float64, d = {d}, `ea.verify`): max |Δ∇| = {report.terms[0].grad_max_abs_diff:.1e} against "
        f"`torch.func.grad`, max |ΔX′| = {report.terms[0].update_max_abs_diff:.1e}; a step of "
        f"{report.terms[0].step:g} lowers the energy from {report.terms[0].energy_before:.6g} to "
        f"{report.terms[0].energy_after:.6g}.",
    ]
    if entry.in_paper:
        check = catalog.compare_with_paper(entry)
        if not check.ok:
            raise PluginError(f"catalog entry {entry.name!r}: comparison with the paper failed: {check}")
        lines += [
            "",
            f"**Against the paper** ({catalog.PAPER_OPERATORS[entry.paper_operator].where}): "
            f"{_plain(check.summary())} (max abs difference {check.max_abs_diff:.1e} after the declared "
            f"sign {entry.paper_sign:+d}).",
        ]
    toml = entry.source.read_text(encoding="utf-8").strip()
    lines += [
        "",
        "**Notes.** " + _paragraphs(entry.notes),
        "",
        f"*Source:* {_plain(entry.citation)}",
        "",
        "Reproduce: `energyarch catalog derive " + entry.name + " --latex --source` · "
        "`energyarch catalog verify " + entry.name + "`",
        "",
        f'??? abstract "Declaration: catalog/{entry.source.name} (read by the restricted parser, never executed)"',
        "",
        "    ```toml",
        *("    " + line if line else "" for line in toml.splitlines()),
        "    ```",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# benchmarks
# ---------------------------------------------------------------------------------------------------------------


def _benchmarks_page(markdown: str) -> str:
    _require(markdown, BENCHMARK_RESULTS, "benchmarks.md")
    results = sorted((_ROOT / "benchmarks" / "results").rglob("*.md"))
    if not results:
        block = (
            '!!! note "No results committed yet"\n'
            "    `benchmarks/results/` holds no `.md` file in this checkout. Run the commands above; each "
            "writes its table there, and the next docs build includes it here unchanged."
        )
        return markdown.replace(BENCHMARK_RESULTS, block)
    parts = []
    for path in results:
        text = path.read_text(encoding="utf-8").strip()
        text = re.sub(r"^(#{1,5}) ", r"#\1 ", text, flags=re.MULTILINE)  # nest under this page's headings
        text = re.sub(r"\A## [^\n]*\n+", "", text)  # our own heading names the file
        name = path.relative_to(_ROOT / "benchmarks" / "results").as_posix()
        plots = [png for png in _result_plots() if path.parent == png.parent and png.stem.startswith(path.stem)]
        text += "".join(f"\n\n![{png.stem}](benchmark-plots/{png.name})" for png in plots)
        parts.append(f'### `benchmarks/results/{name}`\n\n<div class="ea-results" markdown>\n\n{text}\n\n</div>')
    log.info("benchmarks page: %d result files", len(results))
    return markdown.replace(BENCHMARK_RESULTS, "\n\n".join(parts))
