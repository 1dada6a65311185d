"""The OHIF viewer and the browser for the /viewer tests.

`ohif_dir()` is the unpacked viewer, fetched once into <repo>/.viewer (git-ignored; .ci/run
fetches it before the tests). `chromium()` is Debian's browser. Either missing skips the
test, or fails it under PACS_REQUIRE_CHROMIUM=1 (set by .ci/run).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pacs_server.viewer_fetch import DEFAULT_VERSION, FetchError, install, is_installed

REPO = Path(__file__).resolve().parents[2]
VIEWER_DEST = REPO / ".viewer"
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
# Headless, and nothing that reaches beyond the loopback server under test.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]


def _missing(message: str) -> None:
    if os.environ.get("PACS_REQUIRE_CHROMIUM") == "1":
        pytest.fail(f"{message} (PACS_REQUIRE_CHROMIUM=1)", pytrace=False)
    pytest.skip(f"{message}; set PACS_REQUIRE_CHROMIUM=1 to make this fail")


def ohif_dir() -> Path:
    """The `viewer.path` holding the pinned OHIF release, fetched on first use."""
    if is_installed(VIEWER_DEST, DEFAULT_VERSION):
        return VIEWER_DEST
    if shutil.which("npm") is None:
        _missing("the OHIF viewer is not in .viewer and npm is not installed "
                 "(scripts/fetch-viewer)")
    try:
        install(VIEWER_DEST, DEFAULT_VERSION, log=lambda _line: None)
    except FetchError as exc:
        _missing(f"scripts/fetch-viewer failed: {exc}")
    return VIEWER_DEST


def chromium() -> str:
    """The path of Debian's chromium (Playwright drives it; no browser download)."""
    if not os.access(CHROMIUM, os.X_OK):
        _missing(f"{CHROMIUM} is not installed (apt-get install chromium)")
    return CHROMIUM
