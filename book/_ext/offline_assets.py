"""Make the built book work offline and from disk.

Use locally vendored JavaScript when ``scripts/fetch_offline_assets.sh`` has fetched it.

With ``book/_static/vendor/`` present, math (MathJax 3) and saved widget states (RequireJS and
the ipywidgets HTML manager) render with no network, also from ``file://``. The local scripts
carry no ``crossorigin`` attribute, which Chromium would otherwise refuse over ``file://``.
Without the folder, the book keeps the CDN defaults.
"""

from pathlib import Path

VENDOR = Path(__file__).resolve().parents[1] / "_static" / "vendor"
REQUIRED = ("mathjax/tex-mml-chtml.js", "require.js", "embed-amd.js")


def use_local_assets(app, config):
    if not all((VENDOR / name).is_file() for name in REQUIRED):
        return
    config.html_static_path = [*config.html_static_path, str(VENDOR.parent)]
    config.mathjax_path = "vendor/mathjax/tex-mml-chtml.js"
    config.nb_ipywidgets_js = {"vendor/require.js": {}, "vendor/embed-amd.js": {}}


def drop_duplicate_scripts(app, exception):
    """Keep one copy of each inline script line in the written pages.

    sphinx-thebe registers its inline ``const THEBE_JS_URL`` block once per read of the
    environment; a second copy is a SyntaxError in the browser.
    """
    if exception is not None or app.builder.format != "html":
        return
    for page in Path(app.outdir).rglob("*.html"):
        lines, seen, kept = page.read_text().splitlines(keepends=True), set(), []
        for line in lines:
            inline = line.strip().startswith("<script>") and line.strip().endswith("</script>")
            if inline and line.strip() in seen:
                continue
            seen.add(line.strip())
            kept.append(line)
        if len(kept) != len(lines):
            page.write_text("".join(kept))


def setup(app):
    app.connect("config-inited", use_local_assets)
    app.connect("build-finished", drop_duplicate_scripts)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
