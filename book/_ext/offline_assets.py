"""Make the built book work offline and from disk.

Use locally vendored JavaScript when ``scripts/fetch_offline_assets.sh`` has fetched it.

With ``book/_static/offline/`` present, math (MathJax 3) and saved widget states (RequireJS and
the ipywidgets HTML manager, with its fonts) render with no network, also from ``file://``. The
local scripts carry no ``crossorigin`` attribute, which Chromium would otherwise refuse over
``file://``. Without the folder, the book keeps the CDN defaults.

Either way, pages with saved widgets also load ``mathjax2-bridge.js``: the widget renderer
typesets labels through the MathJax 2 API, which MathJax 3 lacks. After the build, the written
pages are tidied so that none of them asks the network for anything (see :func:`tidy_pages`).
"""

import re
from pathlib import Path

VENDOR = Path(__file__).resolve().parents[1] / "_static" / "offline"
PLAYER_ICON_CSS = re.compile(
    r'<link rel="stylesheet"\s+href="https://maxcdn\.bootstrapcdn\.com/font-awesome/[^"]*">\n?'
)
REQUIRED = ("mathjax/tex-mml-chtml.js", "require.js", "html-manager/embed-amd.js")


def use_local_assets(app, config):
    config.html_static_path = [*config.html_static_path, str(VENDOR.parent)]
    if all((VENDOR / name).is_file() for name in REQUIRED):
        config.mathjax_path = "offline/mathjax/tex-mml-chtml.js"
        config.nb_ipywidgets_js = {
            "offline/require.js": {},
            "widgets-offline.js": {},
            "offline/html-manager/embed-amd.js": {},
        }
    config.nb_ipywidgets_js = {**config.nb_ipywidgets_js, "mathjax2-bridge.js": {}}


def _drop_duplicate_inline_scripts(html: str) -> str:
    """Keep one copy of each inline script line.

    sphinx-thebe registers its inline ``const THEBE_JS_URL`` block once per read of the
    environment; a second copy is a SyntaxError in the browser.
    """
    seen, kept = set(), []
    for line in html.splitlines(keepends=True):
        inline = line.strip().startswith("<script>") and line.strip().endswith("</script>")
        if inline and line.strip() in seen:
            continue
        seen.add(line.strip())
        kept.append(line)
    return "".join(kept)


def _drop_player_icon_css(html: str) -> str:
    """Remove the CDN Font Awesome 4 stylesheet that matplotlib's JavaScript player links.

    The book theme ships Font Awesome and draws the player's ``fa`` button icons itself, so the
    link only costs a failed request without a network.
    """
    return PLAYER_ICON_CSS.sub("", html)


def tidy_pages(app, exception):
    """Post-process the written pages: no duplicate inline scripts, no CDN icon stylesheet."""
    if exception is not None or app.builder.format != "html":
        return
    for page in Path(app.outdir).rglob("*.html"):
        html = page.read_text()
        tidy = _drop_player_icon_css(_drop_duplicate_inline_scripts(html))
        if tidy != html:
            page.write_text(tidy)


def setup(app):
    app.connect("config-inited", use_local_assets)
    app.connect("build-finished", tidy_pages)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
