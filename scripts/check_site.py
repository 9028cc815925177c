#!/usr/bin/env python3
"""Check a built documentation site (``mkdocs build`` output) the way a reader would meet it.

Two checks, both run by ``scripts/test.sh`` after the strict build:

``links`` (always; pure Python, no network)
    Every internal ``<a href>``, ``<img src>``, ``<link href>``, ``<script src>`` and ``<source src>`` of every
    HTML page resolves to a file of the site, and every ``#fragment`` of a link to an HTML page names an element
    of that page. ``mkdocs build --strict`` validates links between Markdown pages only; links inside rendered
    notebooks, generated pages and raw HTML are checked here.

``browser`` (when Chromium is on PATH; otherwise skipped with a message)
    Serves the site on 127.0.0.1, opens every page in headless Chromium (``--enable-logging=stderr``) and fails on
    any console error or uncaught exception, on a TeX error rendered by MathJax, and on a page whose mathematics
    was not typeset.

Usage::

    python scripts/check_site.py site                 # links, then the browser check if Chromium is found
    python scripts/check_site.py site --no-browser    # links only
    python scripts/check_site.py site --require-browser   # fail instead of skipping when Chromium is missing

Exit status 0 when every check that ran passed, 1 otherwise; each problem is printed as ``page: what``.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

# attributes that load or link a resource, per tag
LINK_ATTRS = {"a": "href", "img": "src", "link": "href", "script": "src", "source": "src", "iframe": "src"}
# <link rel=...> values that are not resources of this site
IGNORED_RELS = {"canonical", "alternate"}
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


@dataclass
class Page:
    """What the link check needs from one HTML file."""

    links: list[tuple[str, str]] = field(default_factory=list)  # (tag, url) as written
    ids: set[str] = field(default_factory=set)  # id= and <a name=> targets on the page
    math: int = 0  # elements MathJax is asked to typeset


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = Page()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.page.ids.add(attrs["id"])
        if tag == "a" and attrs.get("name"):
            self.page.ids.add(attrs["name"])
        classes = (attrs.get("class") or "").split()
        if "arithmatex" in classes or "jp-RenderedLatex" in classes:
            self.page.math += 1
        name = LINK_ATTRS.get(tag)
        if name is None or attrs.get(name) is None:
            return
        if tag == "link" and set((attrs.get("rel") or "").split()) & IGNORED_RELS:
            return
        self.page.links.append((tag, attrs[name]))


@functools.lru_cache(maxsize=None)
def read_page(path: Path) -> Page:
    parser = _Parser()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return parser.page


def _target(site: Path, base: str, url: str) -> tuple[Path | None, str]:
    """The file that ``url`` (written on the page at site-relative URL ``base``) loads, and its fragment.
    ``None`` for links that leave the site (another scheme, another host)."""
    parts = urlsplit(url)
    if parts.scheme or parts.netloc:
        return None, ""
    resolved = urlsplit(urljoin("http://site.invalid/" + base, url))
    path = unquote(resolved.path).lstrip("/")
    target = site / path
    if path == "" or path.endswith("/") or target.is_dir():
        target = target / "index.html"
    return target, unquote(resolved.fragment)


def check_links(site: Path) -> list[str]:
    """Every internal link, image, stylesheet and script of every page resolves; fragments exist."""
    problems = []
    for html in sorted(site.rglob("*.html")):
        rel = html.relative_to(site).as_posix()
        if rel == "404.html":  # served at any depth, with links written for the site root; checked as index
            continue
        for tag, url in read_page(html).links:
            if url.startswith(("javascript:", "data:", "mailto:")) or url == "":
                continue
            target, fragment = _target(site, rel, url)
            if target is None:
                continue
            if not target.is_file():
                problems.append(f"{rel}: <{tag}> {url} -> {target.relative_to(site)} does not exist")
            elif fragment and target.suffix == ".html" and fragment not in read_page(target).ids:
                problems.append(
                    f"{rel}: <{tag}> {url} -> no element with id {fragment!r} in {target.relative_to(site)}"
                )
    return problems


# -----------------------------------------------------------------------------------------------------------------
# browser
# -----------------------------------------------------------------------------------------------------------------


def find_chromium() -> str | None:
    override = os.environ.get("ENERGYARCH_CHROMIUM")
    if override:
        return shutil.which(override) or override
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        pass


# console messages of Chromium's own (no D-Bus in a container, GPU probing): not the page's
_CONSOLE = re.compile(r":(?:INFO|WARNING|ERROR):CONSOLE[^\]]*\]\s*(?P<msg>.*)$")


def _open_page(chromium: str, url: str, budget_ms: int, timeout: float) -> tuple[list[str], str]:
    """Load ``url`` headless; return the page's console lines and the DOM after scripts ran."""
    cmd = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-extensions",
        "--no-first-run",
        "--disable-dev-shm-usage",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1300,900",
        f"--virtual-time-budget={budget_ms}",
        "--dump-dom",
        url,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    console = [m.group("msg") for line in proc.stderr.splitlines() if (m := _CONSOLE.search(line))]
    if proc.returncode != 0 and not proc.stdout:
        console.append(f"chromium exited with status {proc.returncode}: {proc.stderr.strip()[-400:]}")
    return console, proc.stdout


def check_browser(site: Path, chromium: str, jobs: int = 2, budget_ms: int = 10000) -> list[str]:
    """Open every page in headless Chromium: no console error, MathJax typeset every formula without error."""
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    root = f"http://127.0.0.1:{server.server_address[1]}/"
    pages = [p.relative_to(site).as_posix() for p in sorted(site.rglob("index.html"))]

    def visit(rel: str) -> list[str]:
        url = root + rel[: -len("index.html")]
        try:
            console, dom = _open_page(chromium, url, budget_ms, timeout=60 + budget_ms / 1000)
        except subprocess.TimeoutExpired:
            return [f"{rel}: Chromium did not finish loading the page within {60 + budget_ms / 1000:.0f} s"]
        found = [
            f"{rel}: console: {msg}"
            for msg in console
            if re.search(r"error|uncaught|failed|exception", msg, re.IGNORECASE)
        ]
        if "data-mjx-error" in dom or "<mjx-merror" in dom:
            errors = re.findall(r'data-mjx-error="([^"]*)"', dom)
            found.append(f"{rel}: MathJax could not typeset a formula: {errors[:3] or 'merror element'}")
        expected = read_page(site / rel).math
        typeset = dom.count("<mjx-container")
        if expected and not typeset:
            found.append(f"{rel}: {expected} formula element(s) on the page, none typeset by MathJax")
        return found

    try:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            results = list(pool.map(visit, pages))
    finally:
        server.shutdown()
    print(f"check_site: opened {len(pages)} pages in {Path(chromium).name}")
    return [problem for found in results for problem in found]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("site", type=Path, help="the built site folder (mkdocs build --site-dir)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--no-browser", action="store_true", help="links only")
    group.add_argument("--require-browser", action="store_true", help="fail when Chromium is not found")
    parser.add_argument("--jobs", type=int, default=2, help="Chromium processes at a time (default 2)")
    args = parser.parse_args(argv)
    site = args.site.resolve()
    if not (site / "index.html").is_file():
        print(
            f"check_site: {site} holds no index.html; build the site first "
            f"(NO_MKDOCS_2_WARNING=1 python -m mkdocs build --strict --site-dir {args.site})",
            file=sys.stderr,
        )
        return 1

    start = time.perf_counter()
    problems = check_links(site)
    pages = len(list(site.rglob("*.html")))
    print(f"check_site: links: {pages} pages, {len(problems)} broken ({time.perf_counter() - start:.1f} s)")

    if not args.no_browser:
        chromium = find_chromium()
        if chromium is None:
            message = (
                "check_site: browser check skipped: no Chromium on PATH (looked for "
                f"{', '.join(CHROMIUM_NAMES)}; on Debian/Ubuntu `apt-get install chromium`, or set "
                "ENERGYARCH_CHROMIUM)"
            )
            if args.require_browser:
                print(message.replace("skipped", "required but not possible"), file=sys.stderr)
                return 1
            print(message)
        else:
            start = time.perf_counter()
            found = check_browser(site, chromium, jobs=args.jobs)
            print(f"check_site: browser: {len(found)} problem(s) ({time.perf_counter() - start:.1f} s)")
            problems += found
    for problem in problems:
        print("  " + problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
