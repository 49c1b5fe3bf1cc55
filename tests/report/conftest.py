"""A real headless browser for the report tests: Debian's chromium-headless-shell (or chromium), driven by Playwright.

`make test` installs both: the browser with apt, Playwright with the ``[test]`` extra. Playwright's own
browser download is never used; it launches the Debian binary. When either is missing the tests fail,
naming `make test`, rather than skip: a report nobody opened in a browser is an untested report.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest

# Where Debian's packages put the browser, in order of preference. The /usr/lib binaries come first:
# the /usr/bin names are shell wrappers around them.
BROWSER_PATHS = (
    "/usr/lib/chromium/chromium-headless-shell",  # package chromium-headless-shell
    "/usr/bin/chromium-headless-shell",
    "/usr/lib/chromium/chromium",  # package chromium (full browser, run with --headless)
    "/usr/bin/chromium",
)
INSTALL_HINT = (
    "Run `make test`: it installs Debian's chromium-headless-shell (apt) and Playwright (pip extra [test]). "
    "By hand: `sudo apt-get install chromium-headless-shell` and `pip install -e '.[test]'`."
)
# Chromium's sandbox needs user namespaces or the setuid helper, which containers and root shells lack;
# the only page opened is a file the test itself wrote, so the sandbox protects nothing here. No GPU is
# assumed, and /dev/shm is often a few MB in containers (Chromium then writes its shared memory to /tmp).
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]


def find_browser() -> Optional[Path]:
    """The first executable browser in :data:`BROWSER_PATHS`, or None."""
    for candidate in BROWSER_PATHS:
        path = Path(candidate)
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


@dataclass
class PageLog:
    """Everything a page did that a self-contained, script-free report must not do."""

    url: str  # the report's own file:// URL: the one request allowed
    console: list[tuple[str, str]] = field(default_factory=list)  # (type, text) of every console message
    page_errors: list[str] = field(default_factory=list)  # uncaught exceptions
    dialogs: list[tuple[str, str]] = field(default_factory=list)  # (type, message): alert, confirm, prompt
    requests: list[str] = field(default_factory=list)  # every URL the page asked for

    @property
    def console_errors(self) -> list[str]:
        return [text for kind, text in self.console if kind == "error"]

    @property
    def foreign_requests(self) -> list[str]:
        """Requests other than the report itself and inline data: URIs (a CDN, a font, a broken relative src)."""
        return [url for url in self.requests if url != self.url and not url.startswith("data:")]

    def assert_clean(self) -> None:
        assert self.console_errors == [], f"console errors on {self.url}: {self.console_errors}"
        assert self.page_errors == [], f"page errors on {self.url}: {self.page_errors}"
        assert self.dialogs == [], f"dialogs opened by {self.url}: {self.dialogs}"
        assert self.foreign_requests == [], f"{self.url} requested other resources: {self.foreign_requests}"
        assert self.url in self.requests, f"the browser never requested {self.url}: {self.requests}"


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium per test module (launching takes about a second)."""
    path = find_browser()
    if path is None:
        pytest.fail(f"No headless Chromium found (looked in {', '.join(BROWSER_PATHS)}). {INSTALL_HINT}", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"Playwright is not installed in this Python. {INSTALL_HINT}", pytrace=False)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(path), headless=True, args=BROWSER_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def open_report(browser):
    """``open_report(path, width=1280, height=800) -> (page, log)``: the file loaded offline in a fresh context.

    Console messages, page errors, dialogs (dismissed, so a page that calls alert() still loads) and
    every request are recorded in the returned :class:`PageLog` from before the first byte loads.
    """
    contexts = []

    def open_(path, width: int = 1280, height: int = 800):
        # offline: a request that slipped past the checks fails fast instead of reaching the network
        context = browser.new_context(viewport={"width": width, "height": height}, offline=True)
        contexts.append(context)
        page = context.new_page()
        log = PageLog(url=Path(path).resolve().as_uri())
        page.on("console", lambda message: log.console.append((message.type, message.text)))
        page.on("pageerror", lambda error: log.page_errors.append(str(error)))
        page.on("dialog", lambda dialog: (log.dialogs.append((dialog.type, dialog.message)), dialog.dismiss()))
        page.on("request", lambda request: log.requests.append(request.url))
        page.goto(log.url, wait_until="load")
        return page, log

    yield open_
    for context in contexts:
        context.close()
