"""Chapters as a student runs them: JupyterLab in headless Chromium, the slider moved by hand.

One JupyterLab server (``lab_server.running_lab``: loopback, a token, stopped in every outcome)
serves the repository root, as the README's ``jupyter lab book/...`` does. For each chapter in
``CHAPTERS`` the test opens ``book/<chapter>.ipynb``, clicks *Run > Run All Cells*, and waits
until every code cell has run and the kernel is idle. Then:

- no cell holds an error output;
- the kernel works in ``book/`` with the server's ``RBMEM_CACHE``, as in the book build, so the
  chapter finds ``data/...`` and the trained models;
- every explorer (an output whose ipywidgets slider drives a figure), found by its shape and not
  by a cell index or label, is dragged by the mouse to its last position, and its figure (the
  image's bytes) and readout change;
- the browser console shows no error.

Screenshots go to ``artifacts/screenshots/``: the notebook after the run, and each explorer
before and after the drag (``jupyterlab__<chapter>*.png``); the server's log to
``artifacts/jupyterlab-server.log``. The chapters need the model cache
that the README's test command fills (without it they train their models first: slower, same
result) and Chromium; without Chromium the browser test is skipped with a one-line reason, and
with ``RBMEM_BROWSER_TEST=1`` that is an error instead.
"""

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
from chrome import requirements_mark, start_chrome
from lab_server import jupyter_command, running_lab

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "artifacts" / "screenshots"
CHAPTERS = ["01_flow_matching", "07_reducing_memorisation"]
RUN_TIMEOUT_S = 1200  # a chapter that has to train its models first, on a loaded 2-core CPU
STEP_TIMEOUT_S = 600  # any other step: a guard against hanging on a loaded machine, no target
browser_check = requirements_mark([])

PANEL = "window.jupyterapp && jupyterapp.shell.currentWidget"

NOTEBOOK_READY = f"""
const panel = {PANEL};
return !!(panel && panel.content && panel.content.widgets && panel.sessionContext
          && panel.sessionContext.session && panel.sessionContext.session.kernel
          && panel.sessionContext.session.kernel.status === 'idle'
          && panel.content.widgets.length > 0 && panel.content.widgets.every(c => c.isAttached));
"""

# Every code cell has an execution count (or the run stopped at an error) and the kernel is idle.
RUN_STATE = f"""
const panel = {PANEL};
const code = panel.content.widgets.filter(c => c.model.type === 'code'
                                              && c.model.sharedModel.getSource().trim());
const errors = code.flatMap(c => c.model.outputs.toJSON()
    .filter(o => o.output_type === 'error').map(o => `${{o.ename}}: ${{o.evalue}}`));
return {{
  kernel: panel.sessionContext.session.kernel.status,
  cells: code.length,
  ran: code.filter(c => c.model.executionCount !== null).length,
  busy: code.filter(c => c.promptNode && c.promptNode.textContent.includes('*')).length,
  errors: errors,
}};
"""

KERNEL_SAYS = f"""
const done = arguments[arguments.length - 1];
const kernel = {PANEL}.sessionContext.session.kernel;
const future = kernel.requestExecute({{code: arguments[0], silent: false, store_history: false}});
let text = '';
future.onIOPub = msg => {{ if (msg.header.msg_type === 'stream') {{ text += msg.content.text; }} }};
future.done.then(() => done(text), error => done(`failed: ${{error}}`));
"""

# Indices of the cells whose outputs show an explorer: an ipywidgets slider and a figure.
EXPLORER_CELLS = f"""
const panel = {PANEL};
return panel.content.widgets.map((cell, i) => [cell, i])
    .filter(([cell]) => cell.model.type === 'code' && [...cell.node.querySelectorAll(
        '.jp-OutputArea-output')].some(out => out.querySelector('.widget-slider .noUi-handle')
                                             && out.querySelector('.widget-output img')))
    .map(([, i]) => i);
"""

SHOW_CELL = f"""
const panel = {PANEL};
const cell = panel.content.widgets[arguments[0]];
panel.content.scrollToItem(arguments[0], 'start');
return cell.node.querySelector('.jp-OutputArea');
"""


@pytest.fixture(scope="module")
def lab():
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # Agg would hide figures
    with running_lab(ROOT, env=env, keep_log=SHOTS.parent / "jupyterlab-server.log") as server:
        yield server


@pytest.fixture(scope="module")
def browser():
    driver = start_chrome(window="1400,1000")
    driver.set_script_timeout(STEP_TIMEOUT_S)
    driver.set_page_load_timeout(STEP_TIMEOUT_S)
    yield driver
    driver.quit()


@pytest.fixture
def opened(lab, browser, request):
    """Open ``book/<chapter>.ipynb`` in JupyterLab; afterwards close it unsaved, its kernel
    shut down, and check that ``book/`` holds the same files, the notebook unchanged."""
    notebook = ROOT / "book" / f"{request.param}.ipynb"
    assert notebook.is_file(), f"no notebook {notebook}"
    stored, files = notebook.read_bytes(), sorted(notebook.parent.rglob("*"))
    browser.get_log("browser")  # drop messages from earlier chapters
    browser.get(lab.url(f"lab/tree/book/{notebook.name}"))
    yield request.param
    browser.execute_script(f"const panel = {PANEL}; if (panel?.context) "
                           "{ panel.context.model.dirty = false; }")
    browser.get("about:blank")
    for session in lab.api("sessions"):
        lab.api(f"sessions/{session['id']}", method="DELETE")
    assert notebook.read_bytes() == stored, f"running {notebook.name} in JupyterLab changed it"
    assert sorted(notebook.parent.rglob("*")) == files, "the run added or removed files in book/"


def _wait(what: str, timeout: float, check):
    """Poll ``check()`` until it returns something true; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def _click_menu(browser, menu: str, command: str) -> None:
    """Click the main menu ``menu`` and in it the item that runs ``command``."""
    from selenium.webdriver.common.by import By

    titles = browser.find_elements(By.CSS_SELECTOR, "#jp-MainMenu .lm-MenuBar-item")
    next(t for t in titles if t.text.strip() == menu).click()
    item = _wait(f"the {menu} menu", STEP_TIMEOUT_S, lambda: browser.find_elements(
        By.CSS_SELECTOR, f'.lm-Menu-item[data-command="{command}"]'))
    item[0].click()


def _run_all(browser) -> dict:
    """Run every cell from the Run menu; the run's final state (see ``RUN_STATE``)."""
    opened = browser.execute_script(RUN_STATE)
    assert opened["ran"] == 0, "the notebook was stored with execution counts; strip its outputs"
    _click_menu(browser, "Run", "runmenu:run-all")
    _wait("the first cell to start", STEP_TIMEOUT_S, lambda: browser.execute_script(
        f"return {PANEL}.content.widgets.some(c => c.model.type === 'code' "
        "&& c.model.executionCount !== null || c.promptNode?.textContent.includes('*'));"))

    def finished():
        state = browser.execute_script(RUN_STATE)
        done = state["kernel"] == "idle" and not state["busy"]
        return state if done and (state["ran"] == state["cells"] or state["errors"]) else None

    return _wait("every cell to run", RUN_TIMEOUT_S, finished)


def _explorer_frame(browser, output) -> tuple[str, str] | None:
    """The explorer's figure (its image source) and its slider's readout, once both show."""
    frame = browser.execute_script("""
        const out = arguments[0];
        return [out.querySelector('.widget-output img')?.src || '',
                out.querySelector('.widget-readout')?.textContent.trim() || ''];
    """, output)
    return tuple(frame) if all(frame) else None


def _drag_to_end(browser, output) -> None:
    """Drag the explorer's slider handle with the mouse past the right end of its track."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    handle = output.find_element(By.CSS_SELECTOR, ".widget-slider .noUi-handle")
    track = output.find_element(By.CSS_SELECTOR, ".widget-slider .noUi-target")
    handle_x = handle.rect["x"] + handle.rect["width"] / 2
    step = (track.rect["x"] + track.rect["width"] + 20 - handle_x) / 2
    (ActionChains(browser).move_to_element(handle).click_and_hold()
     .move_by_offset(step, 0).move_by_offset(step, 0).release().perform())


def _move_explorer(browser, index: int, name: str) -> None:
    """Drag the slider of the explorer in cell ``index``; its figure and readout must change."""
    output = browser.execute_script(SHOW_CELL, index)
    before = _wait("the explorer's first figure", STEP_TIMEOUT_S,
                   lambda: _explorer_frame(browser, output))
    assert before[0].startswith("data:image/"), f"{name}: the figure is not an inline image"
    output.screenshot(str(SHOTS / f"{name}_before.png"))
    _drag_to_end(browser, output)
    after = _wait("the explorer's figure to change", STEP_TIMEOUT_S, lambda: (
        (frame := _explorer_frame(browser, output)) and frame[0] != before[0] and frame))
    output.screenshot(str(SHOTS / f"{name}_after.png"))
    assert after[1] != before[1], f"{name}: the figure changed but the readout stayed {before[1]}"


def test_readme_command_finds_jupyterlab():
    """``jupyter lab`` is installed by requirements.txt, at the version it pins."""
    pins = dict(line.split("==") for line in (ROOT / "requirements.txt").read_text().split("\n")
                if "==" in line and not line.startswith("#"))
    shown = subprocess.run([jupyter_command(), "lab", "--version"], capture_output=True,
                           text=True, timeout=STEP_TIMEOUT_S, check=True).stdout.strip()
    assert shown == pins["jupyterlab"]


def test_server_is_stopped_when_the_block_fails():
    """A failure inside ``running_lab`` still ends the server and frees its port."""
    with pytest.raises(ZeroDivisionError), running_lab(ROOT) as server:
        port = int(server.base.rsplit(":", 1)[1].strip("/"))
        assert server.api("status")["kernels"] == 0
        _ = 1 / 0
    assert server.process.poll() is not None
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


@browser_check
@pytest.mark.parametrize("opened", CHAPTERS, indirect=True)
def test_chapter_runs_and_its_explorers_move(browser, opened):
    chapter = opened
    _wait(f"{chapter} to open with an idle kernel", STEP_TIMEOUT_S,
          lambda: browser.execute_script(NOTEBOOK_READY))
    state = _run_all(browser)
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SHOTS / f"jupyterlab__{chapter}.png"))
    assert not state["errors"], f"{chapter}: cells with errors: {state['errors']}"
    assert state["ran"] == state["cells"], f"{chapter}: only {state['ran']}/{state['cells']} ran"

    where = browser.execute_async_script(
        KERNEL_SAYS, "import os; print(os.getcwd()); print(os.environ.get('RBMEM_CACHE'))")
    assert where.split("\n")[:2] == [str(ROOT / "book"), os.environ.get("RBMEM_CACHE", "None")]

    explorers = browser.execute_script(EXPLORER_CELLS)
    assert explorers, f"{chapter}: no explorer (slider driving a figure) in any output"
    for number, index in enumerate(explorers):
        _move_explorer(browser, index, f"jupyterlab__{chapter}__explorer{number}")
    errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, f"{chapter}: errors in the browser console: {errors}"
