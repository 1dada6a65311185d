"""/viewer on a real in-process server: the unpacked OHIF release with its paths under
/viewer/, the generated app-config.js, content types, the SPA fallback, refusals, and
the page that says how to install a missing viewer."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from pacs_server.config import Config
from support.config import server_config
from support.http import TOKEN, base_url, http_get
from support.instances import DicomFiles
from support.scu import SUCCESS, Scu
from support.server import RunningServer
from support.viewer import ohif_dir

StartServer = Callable[..., Awaitable[RunningServer]]


@pytest.fixture(scope="module")
def viewer_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server for the module's tests of /viewer: they only read it, except
    test_study_rows_link_to_the_viewer, the one test that stores (a study of its own)."""
    srv = RunningServer(server_config(tmp_path_factory.mktemp("viewer"), {
        "monitoring.metrics_port": 0, "admin.token": TOKEN, "viewer.path": str(ohif_dir())}))
    srv.start()
    yield srv
    srv.stop()


async def get(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers=headers, allow_redirects=False) as rsp:
            return rsp.status, dict(rsp.headers), await rsp.read()


async def test_index_html_is_served_with_its_paths_under_viewer(
        viewer_server: RunningServer) -> None:
    base = base_url(viewer_server)
    status, headers, body = await get(base + "/viewer/")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    page = body.decode()
    assert 'window.PUBLIC_URL="/viewer/"' in page
    assert 'src="/viewer/app-config.js"' in page
    # Every root-relative link of the npm build now points under /viewer/.
    links = re.findall(r'(?:href|src|content)="(/[^"]*)"', page)
    assert links and all(link.startswith("/viewer/") for link in links), links
    bundle = re.search(r'src="/viewer/(app\.bundle\.[0-9a-f]+\.js)"', page)
    assert bundle is not None
    status, headers, js = await get(f"{base}/viewer/{bundle.group(1)}")
    assert status == 200
    assert headers["Content-Type"].startswith("text/javascript")
    assert "immutable" in headers["Cache-Control"]
    assert b'__webpack_require__.p = "/viewer/"' in js
    assert b'__webpack_require__.p = "/"' not in js


async def test_app_config_points_at_the_servers_dicomweb_root(
        viewer_server: RunningServer) -> None:
    status, headers, body = await get(base_url(viewer_server) + "/viewer/app-config.js")
    assert status == 200
    assert headers["Content-Type"].startswith("text/javascript")
    text = body.decode()
    root = viewer_server.cfg.dicomweb.root
    for key in ("qidoRoot", "wadoRoot", "wadoUriRoot"):
        assert f'{key}: window.location.origin + "{root}"' in text
    assert 'routerBasename: "/viewer"' in text
    assert "investigationalUseDialog: { option: 'never' }" in text
    assert "showStudyList: true" in text


async def test_wasm_css_fonts_and_gzip(viewer_server: RunningServer) -> None:
    base = base_url(viewer_server)
    root = ohif_dir() / f"ohif-{viewer_server.cfg.viewer.version}"
    wasm = next(p.name for p in root.glob("*.wasm"))
    status, headers, body = await get(f"{base}/viewer/{wasm}")
    assert status == 200
    assert headers["Content-Type"] == "application/wasm"
    assert body[:4] == b"\0asm"
    status, headers, css = await get(f"{base}/viewer/app.bundle.css",
                                     **{"Accept-Encoding": "identity"})
    assert status == 200 and headers["Content-Type"].startswith("text/css")
    fonts = re.findall(rb"url\(([^)]*\.woff2)\)", css)
    assert fonts and all(f.startswith(b"/viewer/") for f in fonts)
    status, headers, font = await get(base + fonts[0].decode())
    assert status == 200 and headers["Content-Type"] == "font/woff2"
    status, headers, _ = await get(f"{base}/viewer/app.bundle.css",
                                   **{"Accept-Encoding": "gzip"})
    assert status == 200 and headers.get("Content-Encoding") == "gzip"
    status, _, manifest = await get(f"{base}/viewer/manifest.json")
    assert status == 200 and b'"/viewer/assets/' in manifest and b'"/assets/' not in manifest


async def test_spa_fallback_redirects_and_refusals(viewer_server: RunningServer) -> None:
    base = base_url(viewer_server)
    _, _, index = await get(base + "/viewer/")
    status, _, body = await get(base + "/viewer/viewer?StudyInstanceUIDs=1.2.3")
    assert status == 200 and body == index           # an OHIF route: index.html
    status, headers, _ = await get(base + "/viewer")
    assert status == 302 and headers["Location"] == "/viewer/"
    status, headers, _ = await get(base + "/viewer?StudyInstanceUIDs=1.2.3")
    assert status == 302 and headers["Location"] == "/viewer/viewer?StudyInstanceUIDs=1.2.3"
    status, headers, body = await get(base + "/viewer/no-such-bundle.js")
    assert status == 404 and headers["Content-Type"].startswith("application/json")
    # Dot segments and hidden files never reach the filesystem.
    for path in ("/viewer/.pacs-viewer.json", "/viewer/%2e%2e/%2e%2e/etc/passwd.txt",
                 "/viewer/assets/..%2f..%2fpyproject.toml"):
        status, _, body = await get(base + path)
        assert status == 404, path
        assert b"[project]" not in body and b"root:" not in body


async def test_missing_viewer_gets_a_page_saying_how_to_install_it(
        start_server: StartServer, make_cfg: Callable[..., Config], tmp_path: Path) -> None:
    srv = await start_server(make_cfg({"monitoring.metrics_port": 0,
                                       "viewer.path": str(tmp_path / "none")}))
    base = base_url(srv)
    status, headers, body = await get(base + "/viewer/")
    assert status == 503
    assert headers["Content-Type"].startswith("text/html")
    page = body.decode()
    assert "scripts/fetch-viewer" in page and "npm pack @ohif/app@" in page
    status, _, _ = await get(base + "/viewer/viewer?StudyInstanceUIDs=1.2.3")
    assert status == 503
    status, _, _ = await get(base + "/healthz")        # the rest of the server runs
    assert status == 200


async def test_viewer_disabled_has_no_route(start_server: StartServer,
                                            make_cfg: Callable[..., Config]) -> None:
    srv = await start_server(make_cfg({"monitoring.metrics_port": 0,
                                       "viewer.enabled": False}))
    status, _, _ = await get(base_url(srv) + "/viewer/")
    assert status == 404


async def test_study_rows_link_to_the_viewer(viewer_server: RunningServer,
                                             dicom_files: DicomFiles) -> None:
    sent = dicom_files.fresh("CT_small.dcm")
    [result] = await Scu().astore(viewer_server.port, [sent])
    assert result.status == SUCCESS
    status, page = await http_get(base_url(viewer_server), "/api/browse/studies", TOKEN)
    assert status == 200
    [row] = page["rows"]
    assert row["viewer_url"] == f"/viewer?StudyInstanceUIDs={row['StudyInstanceUID']}"
