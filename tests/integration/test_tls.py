"""DICOM over TLS against real peers: dcmtk echoscu/storescu +tls and pynetdicom with an
ssl context. The good ones get in, the others are refused and logged, the plain port
still answers plain DICOM, and SIGHUP swaps certificates for new associations."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from structlog.testing import capture_logs

from pacs_server.config import Config
from pacs_server.errors import StartupError
from support.archive import index_counts
from support.config import SERVER_AE
from support.dcmtk import Storescp, movescu
from support.instances import DicomFiles
from support.scu import SCU_AE, Scu
from support.security import client_context, make_pki, quick_ae, tls_echo, tls_overrides
from support.server import RunningServer


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"), clients=["client", "modality"])


@pytest.fixture
async def tls_server(start_server: Callable[..., Any], make_cfg: Callable[..., Config],
                     pki: Path) -> RunningServer:
    srv: RunningServer = await start_server(make_cfg(tls_overrides(pki)))
    assert srv.tls_port and srv.tls_port != srv.port
    return srv


def dcmtk_echo(dcmtk: Any, port: int, *tls_args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([dcmtk.tool("echoscu"), "-aet", SCU_AE, "-aec", SERVER_AE,
                           "-to", "5", "-ta", "5", *tls_args, "127.0.0.1", str(port)],
                          env=dcmtk.env, capture_output=True, text=True, timeout=30)


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e.get("event") == name]


async def test_dcmtk_echo_and_store_over_mutual_tls(tls_server: RunningServer, pki: Path,
                                                     dcmtk: Any,
                                                     dicom_files: DicomFiles) -> None:
    port = tls_server.tls_port
    assert port
    with capture_logs() as logs:
        echo = await asyncio.to_thread(dcmtk_echo, dcmtk, port, "+tls", str(pki / "client.key"),
                                       str(pki / "client.pem"), "+cf", str(pki / "ca.pem"))
        assert echo.returncode == 0, echo.stderr
        path = dicom_files.fresh("CT_small.dcm")
        store = await asyncio.to_thread(
            subprocess.run, [dcmtk.tool("storescu"), "-aet", SCU_AE, "-aec", SERVER_AE,
                             "+tls", str(pki / "modality.key"), str(pki / "modality.pem"),
                             "+cf", str(pki / "ca.pem"), "127.0.0.1", str(port), str(path)],
            env=dcmtk.env, capture_output=True, text=True, timeout=30)
        assert store.returncode == 0, store.stderr
    assert index_counts(tls_server.db)["instances"] == 1
    subjects = [e.get("tls_subject") for e in events(logs, "association.accepted")]
    assert subjects == ["O=pacs_server test, CN=client", "O=pacs_server test, CN=modality"]


@pytest.mark.parametrize("case", ["no client certificate", "certificate from another CA",
                                  "server not trusted by the client", "plain DICOM"])
async def test_dcmtk_refused(tls_server: RunningServer, pki: Path, dcmtk: Any, case: str) -> None:
    args = {
        "no client certificate": ["+tla", "+cf", str(pki / "ca.pem")],
        "certificate from another CA": ["+tls", str(pki / "other-client.key"),
                                        str(pki / "other-client.pem"),
                                        "+cf", str(pki / "ca.pem")],
        # The client requires a server certificate it can verify (dcmtk's default).
        "server not trusted by the client": ["+tls", str(pki / "client.key"),
                                             str(pki / "client.pem"),
                                             "+cf", str(pki / "other-ca.pem")],
        "plain DICOM": [],
    }[case]
    expected = {
        "no client certificate": "PEER_DID_NOT_RETURN_A_CERTIFICATE",
        "certificate from another CA": "CERTIFICATE_VERIFY_FAILED",
        "server not trusted by the client": "",
        "plain DICOM": "WRONG_VERSION_NUMBER",
    }[case]
    assert tls_server.tls_port
    with capture_logs() as logs:
        result = await asyncio.to_thread(dcmtk_echo, dcmtk, tls_server.tls_port, *args)
        await asyncio.sleep(0.2)
    assert result.returncode != 0
    assert not events(logs, "association.accepted")
    failures = events(logs, "security.tls_handshake_failed")
    assert len(failures) == 1 and expected in failures[0]["reason"], failures
    # The plain port still answers plain DICOM, and TLS still lets the good ones in.
    assert await Scu().aecho(tls_server.port) == 0
    assert await asyncio.to_thread(tls_echo, tls_server.tls_port, client_context(pki)) == \
        "accepted"


async def test_pynetdicom_over_ssl_context(tls_server: RunningServer, pki: Path) -> None:
    port = tls_server.tls_port
    assert port
    good = await asyncio.to_thread(tls_echo, port, client_context(pki))
    assert good == "accepted"
    other = await asyncio.to_thread(tls_echo, port, client_context(pki, cert="other-client"))
    anonymous = await asyncio.to_thread(tls_echo, port, client_context(pki, cert=None))
    assert (other, anonymous) == ("aborted", "aborted")


def tls11_handshake(port: int, pki: Path) -> str:
    """dcmtk 3.6.7 cannot be told to use TLS 1.1 (its profiles are all TLS 1.2+), so the
    old client is Python's ssl with maximum_version TLS 1.1 and OpenSSL's security level
    lowered so that it may offer it."""
    ctx = client_context(pki)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname="localhost") as sock:
                return f"connected {sock.version()}"
        except ssl.SSLError as exc:
            return f"refused {exc.reason}"


async def test_tls_1_1_refused(tls_server: RunningServer, pki: Path) -> None:
    assert tls_server.tls_port
    with capture_logs() as logs:
        outcome = await asyncio.to_thread(tls11_handshake, tls_server.tls_port, pki)
        await asyncio.sleep(0.2)
    assert outcome.startswith("refused"), outcome
    assert [e["reason"] for e in events(logs, "security.tls_handshake_failed")] == \
        ["UNSUPPORTED_PROTOCOL"]


async def test_silent_tls_client_does_not_block_others(tls_server: RunningServer,
                                                       pki: Path) -> None:
    """One connection to the TLS port that never sends its ClientHello: the handshake
    runs in that connection's thread, so the next client gets in at once."""
    port = tls_server.tls_port
    assert port
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    try:
        started = time.monotonic()
        assert await asyncio.to_thread(tls_echo, port, client_context(pki)) == "accepted"
        assert time.monotonic() - started < 1.0
    finally:
        for sock in silent:
            sock.close()


async def test_a_tls_handshake_under_way_is_no_association_to_drain(
        start_server: Callable[..., Any], make_cfg: Callable[..., Config],
        pki: Path) -> None:
    """A connection still in its TLS handshake runs in its association's own thread
    (dicom/connection.py) but is no association yet: the drain at shutdown does not
    wait for it."""
    srv: RunningServer = await start_server(make_cfg({
        **tls_overrides(pki), "server.shutdown_grace": 30.0,
        "server.negotiation_timeout": 30.0}))
    assert srv.tls_port
    silent = socket.create_connection(("127.0.0.1", srv.tls_port))
    try:
        await asyncio.sleep(0.3)       # accepted: its thread waits for the ClientHello
        with capture_logs() as logs:
            started = time.monotonic()
            await asyncio.to_thread(srv.stop)
            took = time.monotonic() - started
        assert not events(logs, "server.draining"), events(logs, "server.draining")
        assert took < 10, took
    finally:
        silent.close()


async def test_tls_only_and_calling_ae_that_must_use_tls(start_server: Callable[..., Any],
                                                          make_cfg: Callable[..., Config],
                                                          pki: Path) -> None:
    cfg = make_cfg({**tls_overrides(pki), "access_control.allowed_ae_titles": [
        {"ae_title": "CT_01", "tls": True}, SCU_AE, "ECHOSCU"]})
    app: RunningServer = await start_server(cfg)
    assert app.tls_port
    with capture_logs() as logs:
        ae = quick_ae("CT_01")
        plain = await asyncio.to_thread(ae.associate, "127.0.0.1", app.port,
                                        ae_title=SERVER_AE)
        assert plain.is_rejected
        assert await asyncio.to_thread(tls_echo, app.tls_port, client_context(pki),
                                       "CT_01") == "accepted"
    refused = events(logs, "security.association_refused")
    assert [(e["calling_ae"], e["reason"]) for e in refused] == [("CT_01", "tls_required")]


async def test_sighup_reloads_certificates(start_server: Callable[..., Any],
                                           make_cfg: Callable[..., Config], pki: Path,
                                           tmp_path: Path) -> None:
    """Same paths, new files, SIGHUP: new associations are verified with the new CA,
    the association that was open continues."""
    live = tmp_path / "live"
    shutil.copytree(pki, live)
    cfg = make_cfg(tls_overrides(live))
    # What SIGHUP calls, with an unchanged configuration.
    app: RunningServer = await start_server(cfg, reload_config=lambda: cfg)
    assert app.tls_port
    old_ctx = client_context(pki)
    ctx_live = client_context(pki)
    ae = Scu().ae()
    open_assoc = await asyncio.to_thread(ae.associate, "127.0.0.1", app.tls_port,
                                         ae_title=SERVER_AE, tls_args=(ctx_live, "localhost"))
    assert open_assoc.is_established
    try:
        new = make_pki(tmp_path / "new")
        for name in ("server.pem", "server.key", "ca.pem"):
            shutil.copy(new / name, live / name)
        app.reload()
        assert await asyncio.to_thread(tls_echo, app.tls_port, old_ctx) == "aborted"
        assert await asyncio.to_thread(tls_echo, app.tls_port, client_context(new)) == \
            "accepted"
        status = await asyncio.to_thread(open_assoc.send_c_echo)
        assert int(status.Status) == 0
    finally:
        await asyncio.to_thread(open_assoc.release)


@pytest.mark.parametrize("problem", ["missing", "mismatch", "not pem", "bad ca"])
async def test_certificate_errors_are_one_line(start_server: Callable[..., Any],
                                               make_cfg: Callable[..., Config], pki: Path,
                                               tmp_path: Path, problem: str) -> None:
    values = tls_overrides(pki)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    expected = {
        "missing": ("tls.cert_path", {"tls.cert_path": str(tmp_path / "none.pem")}),
        "mismatch": ("tls.key_path", {"tls.key_path": str(pki / "client.key")}),
        "not pem": ("tls.cert_path", {"tls.cert_path": str(junk)}),
        "bad ca": ("tls.ca_path", {"tls.ca_path": str(junk)}),
    }[problem]
    with pytest.raises(StartupError) as err:
        await start_server(make_cfg({**values, **expected[1]}))
    message = str(err.value)
    assert message.startswith(expected[0] + ":") and "\n" not in message, message


@pytest.mark.parametrize(("peer_ca", "status", "delivered"), [
    ("ca.pem", 0x0000, 1),          # trusts our CA: verified, received
    ("other-ca.pem", 0xA801, 0),    # trusts another CA: handshake fails, nothing sent
], ids=["trusted", "untrusted"])
async def test_c_move_to_a_tls_peer(start_server: Callable[..., Any],
                                    make_cfg: Callable[..., Config], pki: Path,
                                    tmp_path: Path, dcmtk: Any, dicom_files: DicomFiles,
                                    peer_ca: str, status: int, delivered: int) -> None:
    """Sub-operations go over TLS to a peer marked `tls: true`: a dcmtk storescp +tls
    that requires and verifies our certificate (the server's). A peer that does not
    trust our CA gets nothing, and the C-MOVE answers a failure instead of hanging."""
    dest = Storescp(tmp_path / "dest", "TLSDEST",
                    extra=["+tls", str(pki / "server.key"), str(pki / "server.pem"),
                           "+cf", str(pki / peer_ca), "--require-peer-cert"])
    try:
        cfg = make_cfg({**tls_overrides(pki), "peers": [
            {"ae_title": "TLSDEST", "host": "127.0.0.1", "port": dest.port, "tls": True}]})
        app: RunningServer = await start_server(cfg)
        path = dicom_files.fresh("CT_small.dcm")
        assert [r.status for r in await Scu().astore(app.port, [path])] == [0]
        assert app.port
        study = pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID
        result = await asyncio.to_thread(movescu, app.port, "STUDY",
                                         [f"StudyInstanceUID={study}"], "TLSDEST")
        assert result.final_status == status, result.output
        assert len(dest.files()) == delivered
        if delivered:
            # storescp verified our certificate (--require-peer-cert) to get that far.
            assert "TLS" in dest.log() or "tls" in dest.log().lower(), dest.log()
    finally:
        dest.stop()


async def test_tls_only_listener(start_server: Callable[..., Any],
                                 make_cfg: Callable[..., Config], pki: Path) -> None:
    """`server.port: -1` turns the plain listener off; TLS still serves."""
    app: RunningServer = await start_server(make_cfg({**tls_overrides(pki), "server.port": -1}))
    assert app.port is None and app.tls_port
    assert await asyncio.to_thread(tls_echo, app.tls_port, client_context(pki)) == "accepted"


def test_cli_exit_code_and_one_line_for_a_bad_key(pki: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "pacs.yaml"
    cfg.write_text(yaml.safe_dump({
        "server": {"port": 0, "host": "127.0.0.1"},
        "storage": {"directory": str(tmp_path / "archive")},
        "database": {"path": str(tmp_path / "pacs.db")},
        "logging": {"file": ""}, "monitoring": {"metrics_port": -1},
        "tls": {"enabled": True, "port": 0, "cert_path": str(pki / "server.pem"),
                "key_path": str(pki / "other-client.key")}}))
    proc = subprocess.run([sys.executable, "-m", "pacs_server", "-c", str(cfg)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("pacs_server:")]
    assert len(errors) == 1 and errors[0].startswith("pacs_server: tls.key_path: "), \
        proc.stderr
    assert "Traceback" not in proc.stderr
