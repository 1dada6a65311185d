"""Who may use DICOMweb (loopback, bearer token, HTTP Basic with hashed passwords), CORS
(same origin by default; preflight for allowed origins) and the audit record of each
request, against the real server."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from pacs_server.passwords import hash_password
from support.config import server_config
from support.instances import bundled_dataset
from support.security import make_pki
from support.server import RunningServer

TOKEN = "dicomweb-token-0123456789"
Start = Callable[..., RunningServer]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """Factory of servers with the HTTP side on an ephemeral port; stopped at teardown."""
    servers: list[RunningServer] = []

    def make(overrides: dict[str, Any], **app_kwargs: Any) -> RunningServer:
        cfg = server_config(tmp_path / f"server{len(servers)}",
                            {"monitoring.metrics_port": 0, **overrides})
        servers.append(RunningServer(cfg, **app_kwargs))
        return servers[-1].start()

    yield make
    for srv in servers:
        srv.stop()


def _url(srv: RunningServer) -> str:
    return f"http://127.0.0.1:{srv.http_port}/dicom-web"


def test_credentials_token_and_basic_users(start: Start) -> None:
    srv = start({
        "dicomweb.access": "credentials",
        "dicomweb.token": TOKEN,
        "dicomweb.users": [{"name": "viewer", "password_hash": hash_password("s3cret")}]})
    url = _url(srv)
    anonymous = requests.get(f"{url}/studies", timeout=10)
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Basic")
    assert "credentials" in anonymous.json()["error"]
    assert requests.get(f"{url}/studies", auth=("viewer", "wrong"), timeout=10).status_code == 401
    assert requests.get(f"{url}/studies", auth=("nobody", "s3cret"), timeout=10).status_code == 401
    assert requests.get(f"{url}/studies", headers={"Authorization": "Bearer nope"},
                        timeout=10).status_code == 401
    for _ in range(2):    # the second one from the verified-credential cache
        assert requests.get(f"{url}/studies", auth=("viewer", "s3cret"),
                            timeout=10).status_code == 200
    client = DICOMwebClient(url=url, headers={"Authorization": f"Bearer {TOKEN}"})
    client.store_instances([bundled_dataset("CT_small.dcm")])
    assert len(client.search_for_studies()) == 1
    # The rest of the HTTP side keeps its own rules.
    assert requests.get(f"http://127.0.0.1:{srv.http_port}/healthz", timeout=10).status_code \
        == 200


def _outside_address() -> str | None:
    """An address of this host that is not loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))       # TEST-NET-1: nothing is sent
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_loopback_access_refuses_other_addresses(start: Start) -> None:
    outside = _outside_address()
    srv = start({"monitoring.host": "0.0.0.0"})
    assert requests.get(f"{_url(srv)}/studies", timeout=10).status_code == 200
    if outside is None:
        return      # a host with loopback only: nothing else can be refused
    rsp = requests.get(f"http://{outside}:{srv.http_port}/dicom-web/studies", timeout=10)
    assert rsp.status_code == 403 and "loopback" in rsp.json()["error"]


def test_cors_same_origin_by_default(start: Start) -> None:
    srv = start({})
    rsp = requests.get(f"{_url(srv)}/studies", headers={"Origin": "https://evil.example"},
                       timeout=10)
    assert rsp.status_code == 200 and "Access-Control-Allow-Origin" not in rsp.headers
    pre = requests.options(f"{_url(srv)}/studies", timeout=10, headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "GET"})
    assert pre.status_code == 403 and "cors_origins" in pre.json()["error"]


def test_cors_allowed_origin_preflight_and_streams(start: Start, tmp_path: Path) -> None:
    origin = "https://viewer.example.org"
    audit = tmp_path / "audit.jsonl"
    srv = start({"dicomweb.cors_origins": [origin], "logging.audit_file": str(audit)})
    url = _url(srv)
    pre = requests.options(f"{url}/studies", timeout=10, headers={
        "Origin": origin, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization, accept"})
    assert pre.status_code == 204
    assert pre.headers["Access-Control-Allow-Origin"] == origin
    for header in ("Authorization", "Accept", "Content-Type"):
        assert header in pre.headers["Access-Control-Allow-Headers"]
    for method in ("GET", "POST"):
        assert method in pre.headers["Access-Control-Allow-Methods"]
    ds = bundled_dataset("CT_small.dcm")
    DICOMwebClient(url=url, headers={"Origin": origin}).store_instances([ds])
    instance = (f"{url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                f"/instances/{ds.SOPInstanceUID}")
    streamed = requests.get(instance, headers={"Origin": origin}, timeout=10)
    assert streamed.status_code == 200
    assert streamed.headers["Access-Control-Allow-Origin"] == origin
    failed = requests.get(f"{url}/studies/1.2.3/metadata", headers={"Origin": origin},
                          timeout=10)
    assert failed.status_code == 404
    assert failed.headers["Access-Control-Allow-Origin"] == origin
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    web = [r for r in records if r.get("service") in ("STOW-RS", "WADO-RS", "QIDO-RS")]
    assert [(r["service"], r["http_status"]) for r in web] == [
        ("STOW-RS", 200), ("WADO-RS", 200), ("WADO-RS", 404)]
    assert web[0]["event"] == "DICOM Instances Transferred" and web[0]["action"] == "C"
    assert web[1]["event"] == "Begin Transferring DICOM Instances"
    assert web[2]["outcome"] == "4" and web[2]["address"] == "127.0.0.1"


def test_https_with_the_tls_certificate(start: Start, tmp_path_factory: pytest.TempPathFactory
                                        ) -> None:
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    srv = start({"monitoring.https": True, "tls.cert_path": str(pki / "server.pem"),
                 "tls.key_path": str(pki / "server.key"), "tls.ca_path": str(pki / "ca.pem")})
    url = f"https://localhost:{srv.http_port}/dicom-web"
    client = DICOMwebClient(url=url)
    client.set_http_retry_params(retry=False)
    session = client._session                       # noqa: SLF001  (trust the test CA)
    session.trust_env = False                       # else REQUESTS_CA_BUNDLE wins
    session.verify = str(pki / "ca.pem")
    ds = bundled_dataset("CT_small.dcm")
    # No client certificate: tls.ca_path asks for one on the DICOM TLS listener only.
    stored = client.store_instances([ds])
    assert stored.ReferencedSOPSequence[0].RetrieveURL.startswith("https://localhost")
    assert len(client.search_for_studies()) == 1
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{url}/studies", timeout=10)       # the test CA is not the system's


def test_access_and_origins_change_on_reload(start: Start, tmp_path: Path) -> None:
    settings: dict[str, Any] = {}

    def current() -> Any:
        return server_config(tmp_path / "server0", {"monitoring.metrics_port": 0, **settings})

    srv = start({}, reload_config=current)
    url = _url(srv)
    assert requests.get(f"{url}/studies", timeout=10).status_code == 200
    settings.update({"dicomweb.access": "credentials", "dicomweb.token": TOKEN,
                     "dicomweb.cors_origins": ["https://viewer.example.org"]})
    assert srv.reload()
    assert requests.get(f"{url}/studies", timeout=10).status_code == 401
    rsp = requests.get(f"{url}/studies", timeout=10, headers={
        "Authorization": f"Bearer {TOKEN}", "Origin": "https://viewer.example.org"})
    assert rsp.status_code == 200
    assert rsp.headers["Access-Control-Allow-Origin"] == "https://viewer.example.org"
