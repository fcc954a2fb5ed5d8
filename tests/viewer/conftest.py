"""A headless Chromium page for viewer tests (Debian's chromium, driven by Playwright).

Without /usr/bin/chromium the browser tests skip locally but fail under CI (CI=true), where
.ci/run installs it.
"""

import os
import shutil

import pytest

CHROMIUM = os.environ.get("MECHKIT_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def _missing(reason: str):
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason}; CI must install it (.ci/run does: apt-get install -y chromium)")
    pytest.skip(f"{reason} (browser tests run in CI)")


@pytest.fixture(scope="session")
def browser():
    if not (os.path.isfile(CHROMIUM) or shutil.which(CHROMIUM)):
        _missing(f"{CHROMIUM} not found")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def open_page(browser):
    """open_page(path) -> (page, errors): loads a local file offline, collecting JS errors."""
    pages = []

    def _open(path):
        context = browser.new_context(offline=True, java_script_enabled=True)
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
        page.on("console", lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None)
        requests = []
        page.on("request", lambda req: requests.append(req.url))
        page.goto(path.resolve().as_uri())
        page.wait_for_load_state("load")
        pages.append(context)
        page.requests = requests
        return page, errors

    yield _open
    for c in pages:
        c.close()
