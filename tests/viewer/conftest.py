"""A headless Chromium page for viewer tests (Debian's chromium, driven by Playwright).

Without /usr/bin/chromium the browser tests skip locally but fail under CI (CI=true), where
.ci/run installs it.
"""

import pytest

from tests.viewer.browser import ARGS, require_chromium


@pytest.fixture(scope="session")
def browser():
    path = require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def open_page(browser):
    """open_page(path) -> (page, errors): loads a local file offline, collecting JS errors."""
    contexts = []

    def _open(path):
        context = browser.new_context(offline=True, java_script_enabled=True)
        contexts.append(context)
        page = context.new_page()
        errors, requests = [], []
        page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
        page.on("console", lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None)
        page.on("request", lambda req: requests.append(req.url))
        page.goto(path.resolve().as_uri())
        page.wait_for_load_state("load")
        page.requests = requests
        return page, errors

    yield _open
    for c in contexts:
        c.close()
