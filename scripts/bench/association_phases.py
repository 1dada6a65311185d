#!/usr/bin/env python3
"""Server-side latency of each step of an association, seen from a raw-socket client.

    .venv/bin/python scripts/bench/association_phases.py [--runs 30] [--proposal storescu]
    .venv/bin/python scripts/bench/association_phases.py --interleave BIN BIN... [--runs 200]

For pacs_server, Orthanc and the pynetdicom floor (scripts/bench/pynetdicom_floor.py), a
client with no DICOM library in its loop (pre-encoded PDUs, blocking socket, TCP_NODELAY)
times: TCP connect, A-ASSOCIATE-RQ -> A-ASSOCIATE-AC, C-ECHO-RQ -> C-ECHO-RSP, and
A-RELEASE-RQ -> A-RELEASE-RP. Each is almost entirely the server's time, so this splits
the whole-echoscu figure of run.py into set-up, one DIMSE exchange and release. The
server's CPU time per association (utime + stime of the process from /proc, over all
the measured associations) is printed too: unlike the latencies, it hardly depends on
what else the machine runs.

`--proposal echo` (the default) proposes Verification alone, as echoscu does;
`--proposal storescu` proposes Verification and pynetdicom's 120 storage SOP classes
with three transfer syntaxes each (121 contexts; dcmtk's storescu proposes 128): what
the negotiation costs.

`--interleave` runs several pacs_server executables at once (e.g. a wrapper that puts
another checkout's src/ first on PYTHONPATH) and sends one association to each in turn:
on a shared machine every variant then sees the same load, which separate runs do not.
"""

from __future__ import annotations

import argparse
import os
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
from pynetdicom.presentation import StoragePresentationContexts, build_context

sys.path.insert(0, str(Path(__file__).resolve().parent))
import servers  # noqa: E402
from servers import ENV, HOST, OrthancServer, PacsServer, cpu_seconds, free_port  # noqa: E402

VERIFICATION = "1.2.840.10008.1.1"
RELEASE_RQ = bytes.fromhex("05000000000400000000")
STEPS = ["connect", "A-ASSOCIATE-RQ -> AC", "C-ECHO-RQ -> RSP", "A-RELEASE-RQ -> RP"]


def associate_rq(called: str, proposal: str = "echo") -> bytes:
    prim = A_ASSOCIATE()
    prim.application_context_name = "1.2.840.10008.3.1.1.1"
    prim.calling_ae_title = "BENCH"
    prim.called_ae_title = called
    contexts = [build_context(VERIFICATION)]
    if proposal == "storescu":
        contexts += [build_context(cx.abstract_syntax, ["1.2.840.10008.1.2.1",
                                                        "1.2.840.10008.1.2.2",
                                                        "1.2.840.10008.1.2"])
                     for cx in StoragePresentationContexts]
    for number, cx in enumerate(contexts):
        cx.context_id = 2 * number + 1
    prim.presentation_context_definition_list = contexts
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
    kind = read_pdu(sock)
    if kind != 0x02:
        raise RuntimeError(f"association not accepted: PDU type 0x{kind:02X}")
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


def measure(port: int, ae: str, runs: int, proposal: str = "echo",
            pid: int | None = None) -> list[float]:
    """Median latency of each step, then the server's CPU ms per association (NaN
    without `pid`)."""
    rq, echo = associate_rq(ae, proposal), echo_rq()
    one_association(port, rq, echo)          # warm-up (and the negotiation cached)
    cpu0 = cpu_seconds(pid) if pid else 0.0
    rows = [one_association(port, rq, echo) for _ in range(runs)]
    cpu = (cpu_seconds(pid) - cpu0) * 1e3 / runs if pid else float("nan")
    return [statistics.median(col) for col in zip(*rows, strict=True)] + [cpu]


def interleaved(bins: list[str], runs: int, proposal: str, root: Path) -> dict[str, list[float]]:
    """`measure` for several pacs_server executables running at once, one association
    to each in turn, so that every one sees the same load (A/B on a busy machine)."""
    rq, echo = associate_rq(PacsServer.ae, proposal), echo_rq()
    started: list[tuple[str, PacsServer]] = []
    try:
        for n, name in enumerate(bins):
            srv = _Variant(root / f"pacs{n}", Path(name).resolve())
            started.append((f"{n}: {name}", srv.start()))
            one_association(srv.port, rq, echo)       # warm-up
        rows: dict[str, list[list[float]]] = {name: [] for name, _ in started}
        cpu0 = {name: cpu_seconds(srv.pid) for name, srv in started}
        for run in range(runs):
            # Each in turn goes first: the one before still winds its association down.
            shift = run % len(started)
            for name, srv in started[shift:] + started[:shift]:
                rows[name].append(one_association(srv.port, rq, echo))
        return {name: [statistics.median(col) for col in zip(*rows[name], strict=True)]
                + [(cpu_seconds(srv.pid) - cpu0[name]) * 1e3 / runs]
                for name, srv in started}
    finally:
        for _, srv in started:
            srv.stop()


class _Variant(PacsServer):
    def __init__(self, workdir: Path, executable: Path) -> None:
        super().__init__(workdir)
        self.executable = executable

    def command(self) -> list[str]:
        return [str(self.executable), *super().command()[1:]]


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
    p.add_argument("--proposal", choices=("echo", "storescu"), default="echo",
                   help="the presentation contexts proposed (1, or 121 like storescu)")
    p.add_argument("--interleave", nargs="+", metavar="BIN",
                   help="pacs_server executables run side by side, one association to "
                        "each in turn (nothing else is measured)")
    a = p.parse_args()
    servers.TRANSPORT = a.transport
    PacsServer.rate_limited = False     # more than 1200 associations a minute from one AE
    if a.pacs_bin:
        servers.PACS_BIN = Path(a.pacs_bin).resolve()
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="assoc-phases-") as tmp:
        if a.interleave:
            results = interleaved(a.interleave, a.runs, a.proposal, Path(tmp))
        for cls in () if a.interleave else (PacsServer,) if a.only_pacs \
                else (PacsServer, OrthancServer):
            with cls(Path(tmp) / cls.name) as srv:   # __enter__ starts it
                results[cls.name] = measure(srv.port, srv.ae, a.runs, a.proposal, srv.pid)
    if not a.only_pacs and not a.interleave:
        port = free_port()
        proc = floor_server(port)
        try:
            time.sleep(0.5)   # the probe connection above holds a thread; let it settle
            results["pynetdicom floor"] = measure(port, "FLOOR", a.runs, a.proposal,
                                                  proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    load = os.getloadavg()[0]
    print(f"median of {a.runs} associations ({a.proposal} proposal), server-side latency "
          f"in ms; 1-minute load average {load:.2f}\n")
    print("| step | " + " | ".join(results) + " |")
    print("| --- |" + " --- |" * len(results))
    rows = [(step, [v[i] for v in results.values()]) for i, step in enumerate(STEPS)]
    rows.append(("total", [sum(v[:len(STEPS)]) for v in results.values()]))
    rows.append(("server CPU per association", [v[-1] for v in results.values()]))
    for step, cells in rows:
        print(f"| {step} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
