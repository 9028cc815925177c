"""The documentation site and the notebooks: stored without outputs, and a strict build that shows everything.

``test_site_builds_strictly`` runs ``mkdocs build --strict`` into a temporary folder (notebooks executed, as in
the published site; mkdocs-jupyter caches executed notebooks in ``.cache/`` by content) and then reads the built
HTML: every page of the nav exists, the catalog page carries every entry of ``catalog/*.toml``, notebook pages
show figures, nothing is loaded from the network, every internal link and image resolves
(``scripts/check_site.py``), links between notebooks lead to their pages, the generated reference tables list
every allowed function and config key, and the paper is cited. The browser check of ``scripts/check_site.py``
(console errors in headless Chromium) runs in ``scripts/test.sh`` after its own build, not here.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import python_env, run_python

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
DOCS_PLUGINS = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python", "mkdocs_jupyter")
EXPECTED_NOTEBOOKS = (
    "01_new_energy",
    "02_catalog",
    "03_train_and_inspect",
    "04_explore_alternatives",
    "05_constraint_modes",
    "06_causal_language_model",
    "07_design_study",
)


def _load_script(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


check_site = _load_script("check_site", ROOT / "scripts" / "check_site.py")


def _catalog_names() -> list[str]:
    """Entry names straight from the TOML files (independent of energyarch.catalog)."""
    return [tomllib.loads(p.read_text(encoding="utf-8"))["name"] for p in sorted((ROOT / "catalog").glob("*.toml"))]


# -------------------------------------------------------------------------------------------------------------
# notebooks as stored
# -------------------------------------------------------------------------------------------------------------


def test_every_notebook_is_there():
    assert [p.stem for p in NOTEBOOKS] == list(EXPECTED_NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code, f"{path.name} has no code cells"
    dirty = [
        i
        for i, c in enumerate(nb["cells"])
        if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count") is not None)
    ]
    assert not dirty, (
        f"{path.name}: cells {dirty} carry outputs or execution counts; clear them "
        f"(jupyter nbconvert --clear-output --inplace {path.relative_to(ROOT)})"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_uses_inline_figures(path):
    """Figures must render in the executed notebook even when MPLBACKEND=Agg is set (as CI does): the first
    code cell selects the inline backend, and no notebook forces Agg."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    sources = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    assert sources[0].startswith("%matplotlib inline"), (
        f"{path.name}: start the first code cell with %matplotlib inline"
    )
    assert not any(re.search(r"matplotlib\.use\(|MPLBACKEND", s) for s in sources), f"{path.name} forces a backend"


# -------------------------------------------------------------------------------------------------------------
# the site
# -------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    missing = [
        m
        for m in DOCS_PLUGINS
        if importlib.util.find_spec(m.split(".")[0]) is None or importlib.util.find_spec(m) is None
    ]
    if missing:
        pytest.skip(f"documentation tools not installed ({', '.join(missing)}): pip install -e '.[dev]'")
    out = tmp_path_factory.mktemp("site")
    env = python_env(NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if proc.returncode != 0:
        log = "\n".join(
            line
            for line in (proc.stdout + proc.stderr).splitlines()
            if not line.startswith("INFO") and "Kernel is running over TCP" not in line
        )
        pytest.fail(f"mkdocs build --strict failed (exit {proc.returncode}):\n{log[-6000:]}")
    return out


def _nav_pages() -> list[str]:
    from mkdocs.config import load_config

    cfg = load_config(str(ROOT / "mkdocs.yml"))
    pages: list[str] = []

    def walk(items):
        for item in items:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            if isinstance(value, list):
                walk(value)
            else:
                pages.append(value)

    walk(cfg["nav"])
    return pages


def _html_path(site: Path, page: str) -> Path:
    stem = page.rsplit(".", 1)[0]
    if stem == "index" or stem.endswith("/index"):
        return site / stem[: -len("index")] / "index.html"
    return site / stem / "index.html"


def test_every_nav_page_is_built(site):
    pages = _nav_pages()
    for required in (
        "index.md",
        "getting-started.md",
        "concepts.md",
        "catalog.md",
        "training.md",
        "benchmarks.md",
        "notebooks.md",
        "reference/index.md",
        *(f"notebooks/{n}.ipynb" for n in EXPECTED_NOTEBOOKS),
    ):
        assert required in pages, f"{required} is missing from the nav of mkdocs.yml"
    for module in (
        "energyarch",
        "compile",
        "derive",
        "emit",
        "runtime",
        "verify",
        "energy",
        "primitives",
        "expr",
        "catalog",
        "models",
        "train",
        "study",
        "data",
    ):
        assert f"reference/{module}.md" in pages, f"API page reference/{module}.md is missing from the nav"
    for page in pages:
        html = _html_path(site, page)
        assert html.is_file(), f"{page} was not built ({html})"
        assert len(html.read_text(encoding="utf-8")) > 2000, f"{html} is (nearly) empty"


def test_catalog_page_lists_every_entry(site):
    html = (site / "catalog" / "index.html").read_text(encoding="utf-8")
    names = _catalog_names()
    assert names, "catalog/ holds no .toml entries"
    for name in names:
        assert f'id="{name}"' in html, f"the catalog page has no section for entry {name!r}"
        assert f"<code>{name}</code>" in html, f"the catalog page does not name entry {name!r}"
    assert "Table 19" in html and "Table 20" in html and "Beyond the paper" in html


def test_api_pages_document_the_modules(site):
    for module, symbol in (
        ("energyarch", "energyarch.Attention"),
        ("compile", "energyarch.compile.compile"),
        ("verify", "energyarch.verify.verify"),
        ("catalog", "energyarch.catalog.tables_markdown"),
        ("models", "energyarch.models"),
        ("train", "energyarch.train"),
        ("study", "energyarch.study"),
        ("data", "energyarch.data"),
    ):
        html = (site / "reference" / module / "index.html").read_text(encoding="utf-8")
        assert f'id="{symbol}"' in html, f"reference/{module}: no documented object {symbol}"


def test_notebook_pages_show_figures_and_math(site):
    for name in ("01_new_energy", "03_train_and_inspect", "05_constraint_modes"):
        html = (site / "notebooks" / name / "index.html").read_text(encoding="utf-8")
        assert html.count("data:image/png;base64,") >= 2, f"notebook page {name} shows no figures"
        assert "jp-RenderedMarkdown" in html
    html = (site / "notebooks" / "01_new_energy" / "index.html").read_text(encoding="utf-8")
    assert "jp-RenderedLatex" in html, "IPython.display.Math output missing from notebook 01"


def test_site_is_self_contained(site):
    """No web fonts, CDN scripts or stylesheets: the site works offline, MathJax included."""
    remote = re.compile(r"""<(?:script|link|img)\b[^>]*\b(?:src|href)=["'](?:https?:)?//""", re.IGNORECASE)
    for html in site.rglob("*.html"):
        text = html.read_text(encoding="utf-8")
        hit = remote.search(text)
        assert hit is None, f"{html.relative_to(site)} loads a remote resource: {hit.group(0)}"
    assert (site / "javascripts" / "mathjax" / "tex-svg-full.js").is_file()
    index = (site / "index.html").read_text(encoding="utf-8")
    assert "javascripts/mathjax/tex-svg-full.js" in index and 'class="arithmatex"' in index


def test_benchmarks_page_shows_every_result_and_plot(site):
    """Each committed benchmarks/results/*.md is on the page, and each *.png is served and shown there."""
    page = (site / "benchmarks" / "index.html").read_text(encoding="utf-8")
    results = ROOT / "benchmarks" / "results"
    for md in sorted(results.glob("*.md")):
        assert f"benchmarks/results/{md.name}" in page, f"{md.name} is missing from the benchmarks page"
    for png in sorted(results.glob("*.png")):
        assert (site / "benchmark-plots" / png.name).is_file(), f"{png.name} is not copied into the site"
        assert f"benchmark-plots/{png.name}" in page, f"{png.name} is not shown on the benchmarks page"


# -------------------------------------------------------------------------------------------------------------
# links, generated tables, citation
# -------------------------------------------------------------------------------------------------------------


def test_every_internal_link_of_the_site_resolves(site):
    """What ``mkdocs build --strict`` does not check: links inside rendered notebooks, generated pages and HTML."""
    assert check_site.check_links(site) == []


def test_notebook_links_lead_to_notebook_pages(site):
    html = (site / "notebooks" / "01_new_energy" / "index.html").read_text(encoding="utf-8")
    for name in ("02_catalog", "03_train_and_inspect", "05_constraint_modes"):
        assert f'href="../{name}/"' in html, f"notebook 01 does not link to the page of {name}"
    html = (site / "notebooks" / "03_train_and_inspect" / "index.html").read_text(encoding="utf-8")
    assert 'href="../../training/"' in html, "notebook 03 does not link to the training guide's page"


@pytest.mark.parametrize("name", EXPECTED_NOTEBOOKS)
def test_notebook_pages_offer_the_notebook_for_download(site, name):
    html = (site / "notebooks" / name / "index.html").read_text(encoding="utf-8")
    assert f'href="{name}.ipynb" download' in html, f"no download button on the page of {name}"
    served = site / "notebooks" / name / f"{name}.ipynb"
    assert json.loads(served.read_text(encoding="utf-8")) == json.loads(
        (ROOT / "notebooks" / f"{name}.ipynb").read_text(encoding="utf-8")
    ), f"{served} is not the notebook"


def test_expression_page_lists_every_allowed_function(site):
    from energyarch.expr import FUNCTIONS

    html = (site / "write-your-own-energy" / "index.html").read_text(encoding="utf-8")
    missing = [name for name in FUNCTIONS if f"<code>{name}(x)</code>" not in html]
    assert not missing, f"'Write your own energy' does not list {missing}"
    for path in ("symbolic", "autodiff", "pairwise kernel"):
        assert path in html


def test_training_page_lists_every_config_key(site):
    from energyarch.models.config import ModelConfig
    from energyarch.train.config import TrainConfig

    html = (site / "training" / "index.html").read_text(encoding="utf-8")
    for cls in (TrainConfig, ModelConfig):
        missing = [f.name for f in dataclasses.fields(cls) if f"<code>{f.name}</code>" not in html]
        assert not missing, f"the training guide's key table lacks {cls.__name__} fields {missing}"


def test_paper_is_cited_and_version_shown(site):
    version = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    index = (site / "index.html").read_text(encoding="utf-8")
    assert "2502.11646" in index and "hu2026hyperset" in index and "inproceedings" in index  # BibTeX (highlighted)
    assert "Yunzhe Hu" in index and "Difan Zou" in index and "Dong Xu" in index
    for page in ("index.html", "catalog/index.html", "reference/derive/index.html"):
        footer = (site / page).read_text(encoding="utf-8").split('class="md-footer', 1)[-1]
        assert f"energyarch {version}" in footer, f"{page}: the footer does not show the version {version}"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "2502.11646" in readme and "shared seeds" not in readme
    assert "MIT License" in (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert (ROOT / "CHANGELOG.md").is_file()


def test_api_reference_hides_private_bases_and_rest_literal_blocks(site):
    for html in sorted((site / "reference").rglob("index.html")):
        text = html.read_text(encoding="utf-8")
        assert not re.search(r"Bases:.{0,200}<code>_", text, re.DOTALL), f"{html}: a private base class is shown"
        assert not re.search(r"::</p>", text), f"{html}: a reST literal block marker '::' is shown"


def test_getting_started_example_runs_as_written(tmp_path):
    """The page's setup and five lines, run as a script with a tiny budget (1 epoch on 64 images): it compiles,
    verifies, trains through the declared energy, prints its accuracy line, and the run folder reloads."""
    page = (ROOT / "docs" / "getting-started.md").read_text(encoding="utf-8")
    section = page[page.index("## A brand-new attention energy") : page.index("What each step gives you")]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 2, "the getting-started example should be a setup block and the five-line block"
    code = "\n".join(blocks)
    assert '"epochs=10"' in code
    code = code.replace('"epochs=10"', '"epochs=1", "limit_train=64", "limit_test=64", "progress=false"')
    assert page.count("```python") == 2, "every python block of the page is run here"
    reload = re.search(r"`(model, task, cfg, state = energyarch\.train\.load_run\(\"runs/cauchy\"\))`", page)
    code += (
        f'\nimport energyarch\n{reload.group(1)}\nprint("reloaded", type(model).__name__)\n'  # as the page writes it
    )
    proc = run_python(code, tmp_path, "getting_started.py")
    assert re.search(r"^test accuracy \d+\.\d% after 1 epochs \(chance 10%\)$", proc.stdout, re.MULTILINE), proc.stdout
    assert "verification (paper mode" in proc.stdout and "reloaded" in proc.stdout


# -------------------------------------------------------------------------------------------------------------
# the checker itself and the docstring rewriting (no site build needed)
# -------------------------------------------------------------------------------------------------------------


def test_link_check_finds_broken_links_and_anchors(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "index.html").write_text(
        '<h1 id="top">x</h1><a href="a/">ok</a><a href="#top">ok</a>'
        '<a href="https://example.org/x">external</a><img src="missing.png">'
    )
    (tmp_path / "a" / "index.html").write_text(
        '<a href="../index.html#top">ok</a><a href="../#nowhere">bad</a><a href="02_catalog.ipynb">bad</a>'
    )
    problems = check_site.check_links(tmp_path)
    assert len(problems) == 3, problems
    assert any("missing.png" in p for p in problems)
    assert any("'nowhere'" in p for p in problems)
    assert any("02_catalog.ipynb" in p for p in problems)


def test_literal_blocks_become_fences():
    pytest.importorskip("griffe")
    docs = _load_script("griffe_doctests", ROOT / "docs" / "griffe_doctests.py")
    text = "Intro ``K``::\n\n    a = b\n      c\n\nafter\n\nNo block::\nprose"
    assert docs.fence_literal_blocks(text) == ("Intro ``K``:\n\n```text\na = b\n  c\n```\n\nafter\n\nNo block::\nprose")


def test_site_cites_published_sources_not_internal_notes(site):
    """The API reference and catalog cite the paper and the docs, never the project's unpublished design notes."""
    hits = [html.relative_to(site) for html in site.rglob("*.html") if "DESIGN" in html.read_text(encoding="utf-8")]
    assert not hits, f"pages mentioning DESIGN: {hits}"
