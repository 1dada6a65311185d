#!/usr/bin/env python3
"""Server CPU while associations sit idle (modalities keep them open for hours).

    .venv/bin/python scripts/bench/idle_cpu.py [--associations 50] [--seconds 10]

For pacs_server (each `--transport`) and Orthanc: open N associations (raw-socket
A-ASSOCIATE-RQ for Verification, as scripts/bench/association_phases.py does), wait a
second, then read the server process's utime+stime from /proc/<pid>/stat before and
after `--seconds` of silence. Prints the CPU used as a percentage of one core.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import servers  # noqa: E402
from association_phases import associate_rq, read_pdu  # noqa: E402
from servers import HOST, OrthancServer, PacsServer, cpu_seconds  # noqa: E402


def idle_cpu(srv: servers.Server, n: int, seconds: float) -> float:
    rq = associate_rq(srv.ae)
    socks = []
    try:
        for _ in range(n):
            sock = socket.create_connection((HOST, srv.port))
            sock.sendall(rq)
            if read_pdu(sock) != 0x02:
                raise RuntimeError("association not accepted")
            socks.append(sock)
        time.sleep(1.0)
        before, t0 = cpu_seconds(srv.pid), time.monotonic()
        time.sleep(seconds)
        used, wall = cpu_seconds(srv.pid) - before, time.monotonic() - t0
        return 100.0 * used / wall
    finally:
        for sock in socks:
            sock.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--associations", type=int, default=50)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--transports", default="events,stock",
                   help="pacs_server's server.transport values to measure")
    p.add_argument("--no-orthanc", action="store_true")
    a = p.parse_args()
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="idle-cpu-") as tmp:
        for transport in filter(None, a.transports.split(",")):
            servers.TRANSPORT = transport
            with PacsServer(Path(tmp) / f"pacs-{transport}") as srv:
                rows.append((f"pacs_server ({transport})",
                             idle_cpu(srv, a.associations, a.seconds)))
        if not a.no_orthanc:
            with OrthancServer(Path(tmp) / "orthanc") as srv:
                rows.append(("Orthanc", idle_cpu(srv, a.associations, a.seconds)))
    print(f"CPU with {a.associations} idle associations open, over {a.seconds:g} s "
          "(% of one core)\n")
    print("| server | CPU % |\n| --- | --- |")
    for name, pct in rows:
        print(f"| {name} | {pct:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
