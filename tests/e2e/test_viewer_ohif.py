"""The built-in viewer as a user meets it: `python -m pacs_server` with the OHIF release
of .viewer, a CT and an MR sent by dcmtk's storescu, and Debian's chromium (headless,
driven by Playwright with `executable_path`; no browser is downloaded).

OHIF's study list shows both studies (QIDO-RS); the link the admin API gives for the
CT study opens it in OHIF's viewer, which draws its pixels (series metadata, then
frames through WADO-RS) within a time limit. Screenshots go to test-artifacts/viewer/.
"""

from __future__ import annotations

import io
import json
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread

from support.instances import bundled_file
from support.viewer import ARTIFACTS, CHROMIUM_ARGS, chromium, ohif_dir

RENDER_TIMEOUT_S = 60.0
SENT = ("CT_small.dcm", "MR_small.dcm")


def viewport_content(png: bytes) -> tuple[float, float]:
    """(share of pixels brighter than the background, their standard deviation)."""
    gray = np.asarray(Image.open(io.BytesIO(png)).convert("L")).astype(float)
    return float((gray > 40).mean()), float(gray.std())


def admin_rows(base: str, token: str) -> list[dict[str, Any]]:
    req = urllib.request.Request(f"{base}/api/browse/studies",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as rsp:
        return json.load(rsp)["rows"]  # type: ignore[no-any-return]


@pytest.mark.dcmtk("storescu")
@pytest.mark.timeout(240)
def test_ohif_lists_the_studies_and_renders_the_ct(run_pacs: Callable[..., Any],
                                                   dcmtk: Any, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    browser_path = chromium()
    token = "viewer-test-token-0123456789"
    config = tmp_path / "pacs.yaml"
    config.write_text(f"viewer:\n  path: {json.dumps(str(ohif_dir()))}\n"
                      f"admin:\n  token: {token}\n")
    server = run_pacs("--metrics-port", "0", config=config)
    http_port = server.wait_for_event("server.started")["metrics_port"]
    base = f"http://127.0.0.1:{http_port}"
    files = [bundled_file(name) for name in SENT]
    sent = subprocess.run([dcmtk.tool("storescu"), "-aet", "STORESCU", "-aec", "PACS",
                           "127.0.0.1", str(server.port), *map(str, files)],
                          env=dcmtk.env, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert sent.returncode == 0, sent.stderr
    ct_study = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    link = next(row["viewer_url"] for row in admin_rows(base, token)
                if row["StudyInstanceUID"] == ct_study)
    shots = ARTIFACTS / "viewer"
    shots.mkdir(parents=True, exist_ok=True)

    with sync_playwright() as pw, tempfile.TemporaryDirectory(dir=tmp_path) as profile:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=browser_path, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 800})
        try:
            page = context.new_page()
            failed: list[str] = []
            page.on("response", lambda rsp: failed.append(f"{rsp.status} {rsp.url}")
                    if rsp.status >= 400 else None)

            # The study list: one row per stored study, with its modality.
            page.goto(f"{base}/viewer/")
            page.get_by_text("1-2 of 2").wait_for(timeout=RENDER_TIMEOUT_S * 1000)
            for modality in ("CT", "MR"):
                page.get_by_text(modality, exact=True).first.wait_for()
            page.screenshot(path=shots / "study-list.png")

            # The CT study, opened by the link pacs_server gives for it.
            started = time.monotonic()
            page.goto(base + link)
            canvas = page.locator("canvas.cornerstone-canvas").first
            canvas.wait_for(timeout=RENDER_TIMEOUT_S * 1000)
            content = (0.0, 0.0)
            while time.monotonic() - started < RENDER_TIMEOUT_S:
                content = viewport_content(canvas.screenshot())
                if content[0] > 0.2 and content[1] > 20:
                    break
                page.wait_for_timeout(500)
            page.screenshot(path=shots / "ct-study.png")
            assert content[0] > 0.2 and content[1] > 20, (
                f"the viewport stayed blank for {RENDER_TIMEOUT_S}s: {content}; "
                f"failed requests: {failed}")
            assert "/viewer/viewer?StudyInstanceUIDs=" + ct_study in page.url
            assert not [f for f in failed if "/dicom-web/" in f], failed
        finally:
            context.close()
