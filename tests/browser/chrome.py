"""Headless Chromium for the browser tests, and the one rule for skipping them.

Both browser checks need the Debian packages ``chromium`` and ``chromium-driver``. Without them a
check is skipped with a one-line reason, unless ``RBMEM_BROWSER_TEST=1`` (as in CI), where a
missing piece is an error.

Example
-------
>>> pytestmark = requirements_mark([])  # doctest: +SKIP
>>> driver = start_chrome()  # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
REQUIRED = os.environ.get("RBMEM_BROWSER_TEST") == "1"


def requirements_mark(missing: list[str]) -> pytest.MarkDecorator:
    """A ``skipif`` mark for a browser check that also needs what ``missing`` names.

    Parameters
    ----------
    missing : list of str
        What the check needs beyond Chromium and chromedriver and does not have.

    Returns
    -------
    pytest.MarkDecorator
        Skips, naming everything missing; raises instead when ``RBMEM_BROWSER_TEST=1``.
    """
    missing = [*missing, *[name for name, path in [("chromium", CHROMIUM),
                                                   ("chromedriver", CHROMEDRIVER)] if not path]]
    if missing and REQUIRED:
        raise RuntimeError(f"browser test required but missing: {', '.join(missing)}")
    return pytest.mark.skipif(bool(missing), reason=f"missing: {', '.join(missing)}")


def start_chrome(window: str = "1280,1600"):
    """A headless Chromium driven by selenium, logging the page's console messages.

    Parameters
    ----------
    window : str
        ``"WIDTH,HEIGHT"`` of the window in pixels.

    Returns
    -------
    selenium.webdriver.Chrome
        Call ``quit()`` when done.
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", f"--window-size={window}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_script_timeout(30)
    return driver
