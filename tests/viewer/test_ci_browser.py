"""Without Chromium the browser tests fail under CI (CI=true) and skip only outside CI."""

import pytest

from tests.viewer.browser import require_chromium


def test_missing_chromium_fails_in_ci(monkeypatch):
    monkeypatch.setenv("MECHKIT_CHROMIUM", "/nonexistent/chromium")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must install it"):
        require_chromium()


def test_missing_chromium_skips_outside_ci(monkeypatch):
    monkeypatch.setenv("MECHKIT_CHROMIUM", "/nonexistent/chromium")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="browser tests run in CI"):
        require_chromium()


def test_present_chromium_is_returned(monkeypatch, tmp_path):
    fake = tmp_path / "chromium"
    fake.write_text("")
    monkeypatch.setenv("MECHKIT_CHROMIUM", str(fake))
    monkeypatch.setenv("CI", "true")
    assert require_chromium() == str(fake)
