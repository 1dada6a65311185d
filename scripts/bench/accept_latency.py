#!/usr/bin/env python3
"""Association set-up with `server.workers: 2` when one worker is busier: A/B of two trees.

    .venv/bin/python scripts/bench/accept_latency.py --a /tmp/base/src [--b src]
        [--runs 100] [--held 1] [--burst 1]

Both servers (workers 2, SQLite) run at once. `--held` associations are opened to each
first and kept open (raw sockets, associated), so one worker holds more live
connections than its sibling: the case where the busier one steps back and the other
must take the connection (dicom/accept.py). Then one association after another (or
`--burst` at the same moment, threads behind a barrier, as 4 storescu started together
do), to A and B in turn, with association_phases.py's raw-socket client (pre-encoded
PDUs, no DICOM library in the loop): TCP connect, A-ASSOCIATE-RQ -> AC, C-ECHO, release.
Printed:
median and 90th percentile of connect + RQ -> AC (the set-up the accept path adds to),
the server CPU (every process: supervisor and workers) per association, and the
1-minute load average before and after.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from association_phases import associate_rq, echo_rq, one_association, read_pdu  # noqa: E402
from servers import HOST, REPO, PacsServer  # noqa: E402
from workers_scaling import tree_cpu_s  # noqa: E402


def hold(port: int, rq: bytes) -> socket.socket:
    """An association left open (its A-ASSOCIATE-AC read, nothing more sent)."""
    sock = socket.create_connection((HOST, port))
    sock.sendall(rq)
    if read_pdu(sock) != 0x02:
        raise RuntimeError("held association not accepted")
    return sock


def burst(port: int, rq: bytes, echo: bytes, count: int) -> list[float]:
    """connect + RQ -> AC of `count` associations requested at once."""
    barrier = threading.Barrier(count)
    out: list[float] = []

    def one() -> None:
        barrier.wait()
        steps = one_association(port, rq, echo)
        out.append(steps[0] + steps[1])

    threads = [threading.Thread(target=one) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if len(out) != count:
        raise RuntimeError(f"{count - len(out)} of {count} associations failed")
    return out


def p90(values: list[float]) -> float:
    return sorted(values)[int(0.9 * (len(values) - 1))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", required=True, help="src directory of version A")
    p.add_argument("--b", default=str(REPO / "src"), help="src directory of version B")
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--held", type=int, default=1, help="associations kept open on each")
    p.add_argument("--burst", type=int, default=1, help="associations requested at once")
    a = p.parse_args()
    trees = {"A": a.a, "B": a.b}
    rq, echo = associate_rq(PacsServer.ae), echo_rq()
    setup: dict[str, list[float]] = {name: [] for name in trees}
    cpu: dict[str, float] = {}
    held: list[socket.socket] = []
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="pacs-accept-") as work:
        servers: dict[str, PacsServer] = {}
        try:
            for name, tree in trees.items():
                srv = PacsServer(Path(work) / name, workers="2")
                srv.env = {"PYTHONPATH": tree}
                servers[name] = srv
                srv.start()
                for _ in range(3):                    # warm-up, both workers
                    one_association(srv.port, rq, echo)
                held += [hold(srv.port, rq) for _ in range(a.held)]
            before = {name: tree_cpu_s(srv.pid) for name, srv in servers.items()}
            for run in range(a.runs):
                for name in (list(trees) if run % 2 == 0 else list(reversed(trees))):
                    setup[name] += burst(servers[name].port, rq, echo, a.burst)
            cpu = {name: (tree_cpu_s(srv.pid) - before[name]) * 1e3 / (a.runs * a.burst)
                   for name, srv in servers.items()}
        finally:
            for sock in held:
                sock.close()
            for srv in servers.values():
                srv.stop()
    load1 = os.getloadavg()[0]
    print(f"\n{a.runs} x {a.burst} association(s) at once each, alternated; workers 2, "
          f"{a.held} held open on each server; load {load0:.1f} -> {load1:.1f}\n")
    print("| version | connect + RQ -> AC median ms | p90 ms | server CPU ms/association |")
    print("| --- | --- | --- | --- |")
    for name, tree in trees.items():
        print(f"| {name} ({tree}) | {statistics.median(setup[name]):.2f} | "
              f"{p90(setup[name]):.2f} | {cpu[name]:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
