// MathJax 3 configuration for the whole site (loaded before docs/javascripts/mathjax/tex-svg-full.js).
// - Markdown pages: pymdownx.arithmatex (generic mode) wraps math in <span|div class="arithmatex"> as \( \) / \[ \].
// - Notebook pages (mkdocs-jupyter): markdown cells and text/latex outputs (IPython.display.Math) keep $ / $$.
// Inside the page body (.md-typeset) only those elements are typeset, so a stray "$" in prose, a table of
// numbers or a log line is left alone. (MathJax re-tests the ignore pattern on every descendant, so the pattern
// must name the container, not match every class: ".*|" would also ignore the <p> inside a notebook cell.)
// Outside the body (the navigation and table of contents) math in headings is typeset as well.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"], ["$", "$"]],
    displayMath: [["\\[", "\\]"], ["$$", "$$"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: "md-typeset",
    processHtmlClass: "arithmatex|jp-RenderedMarkdown|jp-RenderedLatex|jp-MarkdownOutput",
  },
  svg: { fontCache: "global" },   // SVG output: no web fonts to fetch, works from file:// too
};

// Material for MkDocs emits document$ once per page it shows: on the first load and, when instant navigation is
// on, after each in-place navigation. Re-typeset the new body then, once MathJax has started (on the first load
// it may not have). The SVG output keeps a font cache (clearFontCache; CommonHTML would have clearCache).
// scripts/check_site.py opens every page in headless Chromium and fails on any console error.
if (typeof document$ !== "undefined") {
  document$.subscribe(() => {
    if (!window.MathJax || !MathJax.startup || !MathJax.startup.promise) return;
    MathJax.startup.promise = MathJax.startup.promise.then(() => {
      const output = MathJax.startup.output;
      if (output && typeof output.clearFontCache === "function") output.clearFontCache();
      else if (output && typeof output.clearCache === "function") output.clearCache();
      MathJax.typesetClear();
      MathJax.texReset();
      return MathJax.typesetPromise();
    }).catch((err) => console.error("MathJax re-typeset failed:", err));
  });
}
