"""The book's Sphinx extension for vendored JavaScript (book/_ext/offline_assets.py)."""

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "book" / "_static"
CDN_WIDGETS = {"https://cdn.example/require.js": {"crossorigin": "anonymous"},
               "https://cdn.example/embed-amd.js": {"crossorigin": "anonymous"}}


@pytest.fixture
def offline_assets():
    spec = importlib.util.spec_from_file_location(
        "offline_assets", ROOT / "book" / "_ext" / "offline_assets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _config():
    return SimpleNamespace(html_static_path=[], mathjax_path="https://cdn.example/mathjax.js",
                           nb_ipywidgets_js=dict(CDN_WIDGETS))


def _vendor(folder, offline_assets):
    for name in offline_assets.REQUIRED:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("// stand-in\n")


def test_without_vendored_files_the_cdn_stays_and_the_bridge_is_added(offline_assets, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setattr(offline_assets, "VENDOR", tmp_path / "offline")
    config = _config()
    offline_assets.use_local_assets(None, config)
    assert config.mathjax_path == "https://cdn.example/mathjax.js"
    assert list(config.nb_ipywidgets_js) == [*CDN_WIDGETS, "mathjax2-bridge.js"]
    assert config.html_static_path == [str(tmp_path)]


def test_with_vendored_files_every_script_is_local_and_in_load_order(offline_assets, tmp_path,
                                                                     monkeypatch):
    monkeypatch.setattr(offline_assets, "VENDOR", tmp_path / "offline")
    _vendor(tmp_path / "offline", offline_assets)
    config = _config()
    offline_assets.use_local_assets(None, config)
    assert config.mathjax_path == "offline/mathjax/tex-mml-chtml.js"
    scripts = list(config.nb_ipywidgets_js)
    # RequireJS first, then the module path for the renderer's fonts, then the renderer.
    assert scripts == ["offline/require.js", "widgets-offline.js",
                       "offline/html-manager/embed-amd.js", "mathjax2-bridge.js"]
    assert all(attrs == {} for attrs in config.nb_ipywidgets_js.values()), "no crossorigin"
    for name in offline_assets.REQUIRED:
        assert (tmp_path / "offline" / name).is_file()


def test_the_tracked_scripts_it_names_exist():
    for name in ("widgets-offline.js", "mathjax2-bridge.js"):
        assert (STATIC / name).is_file(), name
    assert "html-manager/dist" in (STATIC / "widgets-offline.js").read_text()
    assert "typesetPromise" in (STATIC / "mathjax2-bridge.js").read_text()


def _tidy(offline_assets, folder, html):
    page = folder / "page.html"
    page.write_text(html)
    app = SimpleNamespace(builder=SimpleNamespace(format="html"), outdir=str(folder))
    offline_assets.tidy_pages(app, None)
    return page.read_text()


def test_duplicate_inline_scripts_are_dropped_once_each(offline_assets, tmp_path):
    inline = '<script>const THEBE_JS_URL = "x";</script>\n'
    text = _tidy(offline_assets, tmp_path, f"<head>\n{inline}{inline}<script src='a.js'></script>\n"
                                           f"<script src='a.js'></script>\n</head>\n")
    assert text.count("THEBE_JS_URL") == 1
    assert text.count("<script src='a.js'>") == 2, "only inline scripts are de-duplicated"


def test_the_players_cdn_icon_stylesheet_is_removed(offline_assets, tmp_path):
    from rbmem_tutorial.widgets import animation_html

    player = animation_html(lambda ax, v: ax.plot([0, 1], [0, v]), [1.0, 2.0]).data
    assert "bootstrapcdn" in player, "matplotlib's player no longer links the CDN stylesheet"
    text = _tidy(offline_assets, tmp_path, f"<body>\n{player}\n</body>\n")
    assert "bootstrapcdn" not in text and "https://" not in text
    assert text.count("fa fa-play") == player.count("fa fa-play") > 0, "the player is kept"
