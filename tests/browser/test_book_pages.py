"""Every built page of the book, loaded from disk in headless Chromium.

Checks, per page: math is typeset (no raw TeX left), every image loads, every cell that calls
``plt.show()`` shows a figure and so does every saved widget output, every saved widget
renders with its label, every JavaScript player has its button icons, no explorer shows a saved
slider beside its player, at most one search field shows, and the console shows no error at all:
no script error and no failed load, so the page needs no network. A screenshot of the top of
each page goes to ``artifacts/screenshots/``, and one of its first interactive figure (saved
widget or JavaScript player) where it has one.

The pages exist only after the book is built (README command 1), so CI runs this module as its own
step after the build with ``RBMEM_BROWSER_TEST=1``; then a missing build or browser is a failure.
Without that variable the module is skipped when either is missing.
"""

from pathlib import Path

import pytest
from chrome import requirements_mark, start_chrome
from conftest import book_repository_url

ROOT = Path(__file__).resolve().parents[2]
HTML = ROOT / "_build" / "html"
SHOTS = ROOT / "artifacts" / "screenshots"
pytestmark = requirements_mark(
    [] if (HTML / "index.html").is_file() else ["the built book (_build/html)"])

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
SKIP_PAGES = {"genindex.html", "search.html"}
PAGES = sorted(
    p for p in HTML.rglob("*.html")
    if not {"_static", "_sources", "_images"} & set(p.relative_to(HTML).parts)
    and p.name not in SKIP_PAGES
) if HTML.is_dir() else []

WAIT_FOR_MATH = """
const done = arguments[arguments.length - 1];
const ready = () => window.MathJax && MathJax.startup && MathJax.startup.promise;
const start = Date.now();
(function poll() {
  if (ready()) { MathJax.startup.promise.then(() => done(true), () => done(false)); }
  else if (!document.querySelector('.math')) { done(true); }
  else if (Date.now() - start > 15000) { done(false); }
  else { setTimeout(poll, 100); }
})();
"""

RENDERED_WIDGETS = """
const done = arguments[arguments.length - 1];
const views = [...document.querySelectorAll(
    'script[type="application/vnd.jupyter.widget-view+json"]')];
const models = Object.assign({}, ...[...document.querySelectorAll(
    'script[type="application/vnd.jupyter.widget-state+json"]')]
    .map(s => JSON.parse(s.textContent).state));
const labels = id => {  // descriptions of a saved widget and of the widgets it holds
  const m = models[id]?.state || {};
  const kids = (m.children || []).map(c => labels(c.replace('IPY_MODEL_', '')));
  return [m.description, ...kids.flat()].filter(Boolean);
};
const missing = () => views.flatMap(v => {
  const area = v.parentElement.querySelector('.widget-subarea');
  const id = JSON.parse(v.textContent).model_id;
  if (!area || !area.querySelector('.jupyter-widgets, .lm-Widget')) return [`${id}: empty`];
  const shown = [...area.querySelectorAll('.widget-label')].map(el => el.textContent.trim());
  return labels(id).filter(d => !shown.includes(d)).map(d => `${id}: no label ${d}`);
});
const start = Date.now();
(function poll() {
  const left = missing();
  if (!left.length || Date.now() - start > 15000) { done(left); }
  else { setTimeout(poll, 200); }
})();
"""

SCROLL_TO_EXPLORER = """
const explorer = [...document.querySelectorAll('.widget-subarea, .animation')]
    .find(el => el.classList.contains('animation') || el.querySelector('.widget-slider'));
if (!explorer) { return false; }
explorer.scrollIntoView({block: 'start'});
window.scrollBy(0, -60);
return true;
"""


@pytest.fixture(scope="module")
def browser():
    driver = start_chrome()
    yield driver
    driver.quit()


def test_pages_were_found():
    assert any(p.name == "index.html" for p in PAGES)
    assert len(PAGES) >= 3, [p.name for p in PAGES]


def _redirect_target(page: Path) -> Path | None:
    """The page a bare ``<meta http-equiv="Refresh">`` page sends the reader to, if it is one."""
    head = page.read_text()[:300]
    if 'http-equiv="Refresh"' not in head:
        return None
    return page.parent / head.split("url=")[1].split('"')[0]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(HTML)))
def test_page_renders(browser, page):
    target = _redirect_target(page)
    if target is not None:
        assert target.is_file(), f"{page.name} redirects to a missing page {target}"
        return
    browser.get_log("browser")  # drop messages from earlier pages
    browser.get(page.as_uri())
    assert browser.execute_async_script(WAIT_FOR_MATH), "MathJax did not finish typesetting"

    raw_math = browser.execute_script("""
        return [...document.querySelectorAll('.math')]
            .filter(el => !el.querySelector('mjx-container'))
            .map(el => el.textContent.slice(0, 60));
    """)
    assert not raw_math, f"untypeset math: {raw_math[:3]}"
    text = browser.execute_script("return document.querySelector('main, body').innerText;")
    for marker in ("$$", "\\begin{", "\\frac{"):
        assert marker not in text, f"raw TeX {marker!r} left on the page"

    broken = browser.execute_script("""
        return [...document.images].filter(im => !(im.complete && im.naturalWidth > 0))
            .map(im => im.getAttribute('src'));
    """)
    assert not broken, f"images that did not load: {broken}"

    no_figure = browser.execute_script("""
        return [...document.querySelectorAll('div.cell')]
            .filter(c => (c.querySelector('.cell_input')?.textContent || '').includes('plt.show()'))
            .filter(c => !c.querySelector('.cell_output img'))
            .map(c => c.querySelector('.cell_input').textContent.trim().slice(0, 60));
    """)
    assert not no_figure, f"cells that call plt.show() but show no figure: {no_figure}"
    missing_widgets = browser.execute_async_script(RENDERED_WIDGETS)
    assert not missing_widgets, f"saved widgets that did not render: {missing_widgets}"
    empty_outputs = browser.execute_script("""
        return [...document.querySelectorAll('.widget-output')]
            .filter(o => !o.querySelector('img')).length;
    """)
    assert empty_outputs == 0, f"{empty_outputs} saved widget outputs hold no figure"

    bare_buttons = browser.execute_script("""
        return [...document.querySelectorAll('.anim-buttons button')]
            .filter(b => !b.querySelector('svg, i.fa')?.getBoundingClientRect().width).length;
    """)
    assert bare_buttons == 0, f"{bare_buttons} player buttons have no icon"
    # An explorer (rbmem_tutorial.widgets.explorer) shows its player alone in the web book: a
    # saved slider beside it would show the same explorer twice, one copy frozen.
    saved_sliders = browser.execute_script(
        "return document.querySelectorAll('.widget-slider').length;")
    assert saved_sliders == 0, f"{saved_sliders} saved sliders shown beside the players"

    search_fields = browser.execute_script("""
        return [...document.querySelectorAll('.search-button-field, input[type=search]')]
            .filter(el => el.getBoundingClientRect().width > 0).length;
    """)
    assert search_fields <= 1, f"{search_fields} search fields on the page (one is enough)"

    errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    SHOTS.mkdir(parents=True, exist_ok=True)
    name = str(page.relative_to(HTML)).replace("/", "__").removesuffix(".html")
    browser.save_screenshot(str(SHOTS / f"{name}.png"))
    if browser.execute_script(SCROLL_TO_EXPLORER):  # a second picture: the page's first explorer
        browser.save_screenshot(str(SHOTS / f"{name}__explorer.png"))
    assert not errors, f"console errors (scripts or failed loads): {errors}"


NOTEBOOK_PAGES = [p for p in PAGES if (ROOT / "book" / f"{p.stem}.ipynb").is_file()]


@pytest.mark.parametrize("page", NOTEBOOK_PAGES, ids=lambda p: p.stem)
def test_launch_and_download_buttons_open_this_notebook(browser, page):
    browser.get(page.as_uri())
    links = browser.execute_script("return [...document.querySelectorAll('a')].map(a => a.href);")
    notebook = f"book/{page.stem}.ipynb"
    repo = book_repository_url().removeprefix("https://github.com/").strip("/")  # owner/name
    expected = {
        "Colab": f"https://colab.research.google.com/github/{repo}/blob/main/{notebook}",
        "Binder": f"https://mybinder.org/v2/gh/{repo}/main?urlpath=lab/tree/{notebook}",
    }
    for button, url in expected.items():
        assert url in links, f"no {button} button for {notebook}; links: {links[:40]}"
    downloads = [u for u in links if u.startswith("file:") and u.endswith(".ipynb")]
    assert downloads, "no .ipynb download button"
    for url in downloads:
        path = Path(url.removeprefix("file://"))
        assert path.is_file() and path.name == f"{page.stem}.ipynb", url
