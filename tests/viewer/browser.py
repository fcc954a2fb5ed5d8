"""Finding Debian's headless Chromium: a test failure under CI (CI=true) when it is missing, a skip elsewhere."""

import os
import shutil

import pytest

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_chromium() -> str:
    """The Chromium executable path; fails (CI) or skips (local runs) when it or Playwright is missing."""
    path = os.environ.get("MECHKIT_CHROMIUM", "/usr/bin/chromium")
    reason = None
    if not (os.path.isfile(path) or shutil.which(path)):
        reason = f"{path} not found"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "the playwright package is not installed"
    if reason:
        if in_ci():
            pytest.fail(f"{reason}; CI must install it (.ci/run does: apt-get install -y chromium)")
        pytest.skip(f"{reason} (browser tests run in CI)")
    return path
