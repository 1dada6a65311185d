"""The security tests' harness: a throw-away PKI, TLS clients, raw sockets from a
chosen loopback address, and PDUs built by pynetdicom (also for support.fuzz_pdus).

127.0.0.0/8 is loopback on Linux, so binding a client to 127.0.0.2 gives the server a
second "host" to pin, refuse or flood from.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import socket
import ssl
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ASSOCIATE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context
from pynetdicom.transport import AddressInformation

from support.config import SERVER_AE
from support.scu import NATIVE, SCU_AE, SUCCESS, VERIFICATION, Scu

ROOT = Path(__file__).resolve().parents[2]


def _pki_module() -> ModuleType:
    path = ROOT / "scripts" / "make-test-pki"
    loader = importlib.machinery.SourceFileLoader("make_test_pki", str(path))
    spec = importlib.util.spec_from_loader("make_test_pki", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def make_pki(directory: Path, **kwargs: Any) -> Path:
    """scripts/make-test-pki into `directory` (ca, server, client, other-ca, other-client)."""
    return Path(_pki_module().make_pki(directory, **kwargs))


def tls_overrides(pki: Path, *, mutual: bool = True) -> dict[str, Any]:
    """Config overrides for a TLS listener on an ephemeral port with the test PKI."""
    values: dict[str, Any] = {"tls.enabled": True, "tls.port": 0,
                              "tls.cert_path": str(pki / "server.pem"),
                              "tls.key_path": str(pki / "server.key")}
    if mutual:
        values["tls.ca_path"] = str(pki / "ca.pem")
    return values


def client_context(pki: Path, cert: str | None = "client", ca: str = "ca") -> ssl.SSLContext:
    """What a modality would use: verifies the server with `ca`, presents `cert`."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki / f"{ca}.pem"))
    if cert is not None:
        ctx.load_cert_chain(str(pki / f"{cert}.pem"), str(pki / f"{cert}.key"))
    return ctx


def quick_ae(calling: str = SCU_AE) -> AE:
    """Our SCU's AE (Verification) with 5 s timeouts: a refused peer is known quickly."""
    ae = Scu(calling).ae()
    ae.acse_timeout = 5
    ae.network_timeout = 5
    return ae


def _echo(port: int, calling: str, **kwargs: Any) -> tuple[str, Association]:
    """'accepted' (C-ECHO answered Success), 'rejected' or 'aborted', and the association."""
    with Scu(calling).associate(port, ae=quick_ae(calling), require=False, **kwargs) as assoc:
        if assoc.is_established:
            status = assoc.send_c_echo()
            assert int(status.Status) == SUCCESS
            return "accepted", assoc
        return ("rejected" if assoc.is_rejected else "aborted"), assoc


def tls_echo(port: int, ctx: ssl.SSLContext, calling: str = SCU_AE,
             hostname: str = "localhost") -> str:
    """'accepted' (and C-ECHO answered), 'rejected' or 'aborted' over TLS (pynetdicom)."""
    return _echo(port, calling, tls_args=(ctx, hostname))[0]


def connect_from(source: str, port: int, timeout: float = 5.0) -> socket.socket:
    """A TCP connection to 127.0.0.1:port from the loopback address `source`."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def echo_from(source: str, port: int, calling: str = SCU_AE) -> str:
    """A pynetdicom association from `source`: accepted (C-ECHO ok), rejected
    "<result>/<source>/<diagnostic>" (PS3.8 9.3.4), or aborted."""
    outcome, assoc = _echo(port, calling, bind_address=(source, 0))
    if outcome == "rejected":
        rsp = assoc.acceptor.primitive
        assert rsp is not None
        return f"rejected {rsp.result}/{rsp.result_source}/{rsp.diagnostic}"
    return outcome


def hold(source: str, port: int, calling: str) -> Association:
    """An association from `source` left open for the caller to release."""
    return Scu(calling).ae().associate("127.0.0.1", port, ae_title=SERVER_AE,
                                       bind_address=(source, 0))


# --------------------------------------------------------------------------- PDUs

def associate_rq(calling: str = SCU_AE, called: str = SERVER_AE, context_id: int = 1,
                 max_pdu: int = 16384) -> bytes:
    """An A-ASSOCIATE-RQ proposing Verification, encoded by pynetdicom."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    primitive.calling_presentation_address = AddressInformation("127.0.0.1", 11112)
    primitive.called_presentation_address = AddressInformation("127.0.0.1", 11112)
    cx = build_context(VERIFICATION, list(NATIVE))
    cx.context_id = 1
    primitive.presentation_context_definition_list = [cx]
    item = MaximumLengthNotification()
    item.maximum_length_received = max_pdu
    primitive.user_information = [item]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    data = bytearray(pdu.encode())
    if context_id != 1:
        # The presentation context item's ID byte (pynetdicom refuses to encode others).
        at = data.find(b"\x20\x00", 74)
        data[at + 4] = context_id & 0xFF
    return bytes(data)


def echo_rq_pdata(context_id: int = 1, message_id: int = 1) -> bytes:
    """P-DATA-TF carrying a C-ECHO-RQ command set, encoded by pynetdicom."""
    from pynetdicom.dimse_messages import C_ECHO_RQ
    from pynetdicom.dimse_primitives import C_ECHO

    primitive = C_ECHO()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = VERIFICATION
    msg = C_ECHO_RQ()
    msg.primitive_to_message(primitive)
    out = b""
    for pdata in msg.encode_msg(context_id, 16384):
        pdu = P_DATA_TF()
        pdu.from_primitive(pdata)
        out += pdu.encode()
    return out


def associated(port: int, source: str = "127.0.0.1", timeout: float = 5.0) -> socket.socket:
    """A raw socket on which our A-ASSOCIATE-RQ (Verification) was accepted."""
    sock = connect_from(source, port, timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(associate_rq())
    reply = read_pdu(sock, timeout)
    if not reply or reply[0] != 0x02:   # A-ASSOCIATE-AC
        sock.close()
        raise ConnectionError(f"association not accepted: {reply[:10].hex()}")
    return sock


def read_pdu(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """One PDU from the server (b"" if it closed first)."""
    sock.settimeout(timeout)
    head = b""
    while len(head) < 6:
        chunk = sock.recv(6 - len(head))
        if not chunk:
            return head
        head += chunk
    length = int.from_bytes(head[2:6], "big")
    body = b""
    while len(body) < length:
        chunk = sock.recv(min(65536, length - len(body)))
        if not chunk:
            break
        body += chunk
    return head + body


def association_threads() -> int:
    """Threads that belong to associations (acceptor, DUL, per-connection handler)."""
    return sum(1 for t in threading.enumerate()
               if t.name.startswith("AcceptorThread") or "process_request_thread" in t.name
               or isinstance(t, DULServiceProvider))


def wait_threads(baseline: int, timeout: float = 3.0) -> int:
    """Wait until the association threads are back to `baseline`; returns the count."""
    deadline = time.monotonic() + timeout
    count = association_threads()
    while count > baseline and time.monotonic() < deadline:
        time.sleep(0.02)
        count = association_threads()
    return count
