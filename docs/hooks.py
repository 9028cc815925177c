"""MkDocs hooks: generate the catalog and benchmark pages at build time, so they cannot drift.

- ``catalog.md``: the markers ``<!-- energyarch:catalog-tables -->`` and ``<!-- energyarch:catalog-entries -->``
  are replaced by :func:`energyarch.catalog.tables_markdown` (Tables 19, 20 and "beyond", regenerated from
  ``catalog/*.toml``) and by one section per entry: its declaration, what the compiler derived and why, the
  float64 check against ``torch.func.grad`` (:func:`energyarch.verify`) and, for the paper's rows, the comparison
  with the printed formula (:func:`energyarch.catalog.compare_with_paper`).
- ``benchmarks.md``: the marker ``<!-- energyarch:benchmark-results -->`` is replaced by every
  ``benchmarks/results/**/*.md`` file as committed (or a note that none is there): numbers are never written by hand.
  Plots ``benchmarks/results/NAME*.png`` are shown under the results file ``NAME.md``.

A missing marker, an unloadable catalog or a failing check stops the build: the pages would otherwise lie.
"""

from __future__ import annotations

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
    return config


def on_files(files, config):
    """Serve the committed benchmark plots (``benchmarks/results/*.png``) under ``benchmark-plots/``."""
    from mkdocs.structure.files import File

    for png in _result_plots():
        files.append(File.generated(config, f"benchmark-plots/{png.name}", abs_src_path=str(png)))
    return files


def _result_plots() -> list[Path]:
    return sorted((_ROOT / "benchmarks" / "results").glob("*.png")) if _ROOT is not None else []


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri == "catalog.md":
        return _catalog_page(markdown)
    if page.file.src_uri == "benchmarks.md":
        return _benchmarks_page(markdown)
    return markdown


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
    tables = re.sub(r"\A# [^\n]*\n+", "", tables)          # the page has its own title
    index = ["| name | operator | family | where | pattern |", "|---|---|---|---|---|"]
    for e in entries.values():
        where = f"Table {e.table}, row {e.row}" if e.in_paper else f"beyond the paper, row {e.row}"
        index.append(f"| [`{e.name}`](#{e.name}) | {_plain(e.title)} | {e.family} | {where} | {e.pattern} |")
    log.info("catalog page: %d entries from %s", len(entries), directory)
    tables = f'<div class="ea-catalog-tables" markdown>\n\n{tables}\n\n</div>'
    markdown = markdown.replace(CATALOG_TABLES, "\n".join(index) + "\n\n" + tables)
    return markdown.replace(CATALOG_ENTRIES, "\n\n".join(sections))


def _plain(text: str) -> str:
    """Prose from a TOML file as literal markdown text (no emphasis, links, HTML or math by accident)."""
    text = html.escape(" ".join(text.split()), quote=False)
    return re.sub(r"([\\`*_\[\]|$#])", r"\\\1", text)


def _paragraphs(text: str) -> str:
    return "\n\n".join(_plain(p) for p in re.split(r"\n\s*\n", text.strip()) if p.strip())


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
        raise PluginError(f"catalog entry {entry.name!r} declares pattern {entry.pattern!r}, compiler finds {dv.pattern!r}")
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
        lines += ["", f"**Against the paper** ({catalog.PAPER_OPERATORS[entry.paper_operator].where}): "
                      f"{_plain(check.summary())} (max abs difference {check.max_abs_diff:.1e} after the declared "
                      f"sign {entry.paper_sign:+d})."]
    toml = entry.source.read_text(encoding="utf-8").strip()
    lines += ["", "**Notes.** " + _paragraphs(entry.notes), "", f"*Source:* {_plain(entry.citation)}", "",
              "Reproduce: `energyarch catalog derive " + entry.name + " --latex --source` · "
              "`energyarch catalog verify " + entry.name + "`", "",
              f'??? abstract "Declaration: catalog/{entry.source.name} (read by the restricted parser, never executed)"',
              "", "    ```toml", *("    " + line if line else "" for line in toml.splitlines()), "    ```"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# benchmarks
# ---------------------------------------------------------------------------------------------------------------

def _benchmarks_page(markdown: str) -> str:
    _require(markdown, BENCHMARK_RESULTS, "benchmarks.md")
    results = sorted((_ROOT / "benchmarks" / "results").rglob("*.md"))
    if not results:
        block = ('!!! note "No results committed yet"\n'
                 "    `benchmarks/results/` holds no `.md` file in this checkout. Run the commands above; each "
                 "writes its table there, and the next docs build includes it here unchanged.")
        return markdown.replace(BENCHMARK_RESULTS, block)
    parts = []
    for path in results:
        text = path.read_text(encoding="utf-8").strip()
        text = re.sub(r"^(#{1,5}) ", r"#\1 ", text, flags=re.MULTILINE)  # nest under this page's headings
        text = re.sub(r"\A## [^\n]*\n+", "", text)                       # our own heading names the file
        name = path.relative_to(_ROOT / "benchmarks" / "results").as_posix()
        plots = [png for png in _result_plots() if path.parent == png.parent and png.stem.startswith(path.stem)]
        text += "".join(f"\n\n![{png.stem}](benchmark-plots/{png.name})" for png in plots)
        parts.append(f"### `benchmarks/results/{name}`\n\n{text}")
    log.info("benchmarks page: %d result files", len(results))
    return markdown.replace(BENCHMARK_RESULTS, "\n\n".join(parts))
