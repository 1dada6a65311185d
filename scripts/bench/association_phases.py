#!/usr/bin/env python3
"""Server-side latency of each step of an association, seen from a raw-socket client.

    .venv/bin/python scripts/bench/association_phases.py [--runs 30]

For pacs_server, Orthanc and the pynetdicom floor (scripts/bench/pynetdicom_floor.py), a
client with no DICOM library in its loop (pre-encoded PDUs, blocking socket, TCP_NODELAY)
times: TCP connect, A-ASSOCIATE-RQ -> A-ASSOCIATE-AC, C-ECHO-RQ -> C-ECHO-RSP, and
A-RELEASE-RQ -> A-RELEASE-RP. Each is almost entirely the server's time, so this splits
the whole-echoscu figure of run.py into set-up, one DIMSE exchange and release.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pynetdicom.dimse_messages import C_ECHO_RQ
from pynetdicom.dimse_primitives import C_ECHO
from pynetdicom.pdu import A_ASSOCIATE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context

sys.path.insert(0, str(Path(__file__).resolve().parent))
import servers  # noqa: E402
from servers import ENV, HOST, OrthancServer, PacsServer, free_port  # noqa: E402

VERIFICATION = "1.2.840.10008.1.1"
RELEASE_RQ = bytes.fromhex("05000000000400000000")
STEPS = ["connect", "A-ASSOCIATE-RQ -> AC", "C-ECHO-RQ -> RSP", "A-RELEASE-RQ -> RP"]


def associate_rq(called: str) -> bytes:
    prim = A_ASSOCIATE()
    prim.application_context_name = "1.2.840.10008.3.1.1.1"
    prim.calling_ae_title = "BENCH"
    prim.called_ae_title = called
    cx = build_context(VERIFICATION)
    cx.context_id = 1
    prim.presentation_context_definition_list = [cx]
    max_len = MaximumLengthNotification()
    max_len.maximum_length_received = 16384
    impl = ImplementationClassUIDNotification()
    impl.implementation_class_uid = "1.2.826.0.1.3680043.9.7433.1"
    prim.user_information = [max_len, impl]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(prim)
    return bytes(pdu.encode())


def echo_rq() -> bytes:
    prim = C_ECHO()
    prim.MessageID = 1
    prim.AffectedSOPClassUID = VERIFICATION
    msg = C_ECHO_RQ()
    msg.primitive_to_message(prim)
    out = b""
    for pdata in msg.encode_msg(1, 16384):
        pdu = P_DATA_TF()
        pdu.from_primitive(pdata)
        out += pdu.encode()
    return out


def read_pdu(sock: socket.socket) -> int:
    """Read one whole PDU; return its type."""
    head = b""
    while len(head) < 6:
        head += sock.recv(6 - len(head))
    left = struct.unpack(">L", head[2:])[0]
    while left:
        left -= len(sock.recv(min(left, 65536)))
    return head[0]


def one_association(port: int, rq: bytes, echo: bytes) -> list[float]:
    t0 = time.perf_counter()
    sock = socket.create_connection((HOST, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    t1 = time.perf_counter()
    sock.sendall(rq)
    if read_pdu(sock) != 0x02:
        raise RuntimeError("association not accepted")
    t2 = time.perf_counter()
    sock.sendall(echo)
    if read_pdu(sock) != 0x04:
        raise RuntimeError("no P-DATA answer to C-ECHO")
    t3 = time.perf_counter()
    sock.sendall(RELEASE_RQ)
    if read_pdu(sock) != 0x06:
        raise RuntimeError("no A-RELEASE-RP")
    t4 = time.perf_counter()
    sock.close()
    return [(b - a) * 1e3 for a, b in ((t0, t1), (t1, t2), (t2, t3), (t3, t4))]


def measure(port: int, ae: str, runs: int) -> list[float]:
    rq, echo = associate_rq(ae), echo_rq()
    one_association(port, rq, echo)          # warm-up
    rows = [one_association(port, rq, echo) for _ in range(runs)]
    return [statistics.median(col) for col in zip(*rows, strict=True)]


def floor_server(port: int) -> subprocess.Popen[bytes]:
    script = Path(__file__).resolve().parent / "pynetdicom_floor.py"
    proc = subprocess.Popen([sys.executable, str(script), "chunked", str(port)], env=ENV)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("pynetdicom floor server did not start")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--pacs-bin", help="the pacs_server executable (e.g. scripts/bench/what_if.py)")
    p.add_argument("--only-pacs", action="store_true", help="skip Orthanc and the floor")
    p.add_argument("--transport", choices=("events", "stock"),
                   help="pacs_server's server.transport")
    a = p.parse_args()
    servers.TRANSPORT = a.transport
    if a.pacs_bin:
        servers.PACS_BIN = Path(a.pacs_bin).resolve()
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="assoc-phases-") as tmp:
        for cls in (PacsServer,) if a.only_pacs else (PacsServer, OrthancServer):
            with cls(Path(tmp) / cls.name) as srv:   # __enter__ starts it
                results[cls.name] = measure(srv.port, srv.ae, a.runs)
    if not a.only_pacs:
        port = free_port()
        proc = floor_server(port)
        try:
            time.sleep(0.5)   # the probe connection above holds a thread; let it settle
            results["pynetdicom floor"] = measure(port, "FLOOR", a.runs)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    print(f"median of {a.runs} associations, server-side latency in ms\n")
    print("| step | " + " | ".join(results) + " |")
    print("| --- |" + " --- |" * len(results))
    for i, step in enumerate(STEPS + ["total"]):
        cells = [sum(v) if step == "total" else v[i] for v in results.values()]
        print(f"| {step} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
