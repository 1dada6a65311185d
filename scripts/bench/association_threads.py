#!/usr/bin/env python3
"""Server CPU per C-ECHO association, by thread, for several source trees side by side.

    .venv/bin/python scripts/bench/association_threads.py [--runs 250] SRC [SRC...]
        [--proposal storescu]

Each SRC (a `src/` directory, e.g. `git archive BASE src | tar -x -C /tmp/base`) runs
as its own pacs_server in this virtualenv, under a launcher that adds every ended
thread's `time.thread_time()` to its role (accept loop, request handler, association,
DUL, ...) and reads the live threads' CPU clocks when sent SIGUSR1. The associations
(association_phases.py's raw-socket client: A-ASSOCIATE-RQ, C-ECHO, A-RELEASE) go to
each server in turn, so every variant sees the same load. Printed: CPU ms per
association by thread role and for the whole process, and the median latency of each
step. Threads that start and end within a few milliseconds (three per association
here) are invisible to /proc polling (thread_cpu.py); this counts them.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import association_phases as phases  # noqa: E402
from servers import PacsServer  # noqa: E402

LAUNCHER = '''#!{python}
import collections, json, os, signal, sys, threading, time
lock = threading.Lock()
ended = collections.Counter()

def role(t):
    kind = type(t).__name__
    if "Association" in kind:
        return "association thread"
    if "DUL" in kind:
        return "DUL thread"
    if "process_request_thread" in t.name:
        return "request handler thread"
    if t.name.startswith("AcceptorServer"):
        return "accept loop"
    return "other threads"

run = threading.Thread.run

def counted_run(self):
    try:
        run(self)
    finally:
        spent = time.thread_time()
        with lock:
            ended[role(self)] += spent

threading.Thread.run = counted_run

def dump(*_):
    out = collections.Counter(ended)
    for t in threading.enumerate():
        try:
            spent = time.clock_gettime(time.pthread_getcpuclockid(t.ident))
        except (OSError, TypeError):
            continue
        out["main (event loop)" if t is threading.main_thread() else role(t)] += spent
    out["whole process"] = sum(os.times()[:2])
    with open({out!r} + ".tmp", "w") as f:
        json.dump(out, f)
    os.replace({out!r} + ".tmp", {out!r})

signal.signal(signal.SIGUSR1, dump)
sys.path.insert(0, {src!r})
from pacs_server.cli import main
sys.exit(main())
'''


def launcher(root: Path, n: int, src: str) -> tuple[Path, Path]:
    out = root / f"cpu{n}.json"
    path = root / f"launch{n}.py"
    path.write_text(LAUNCHER.format(python=sys.executable, out=str(out),
                                    src=str(Path(src).resolve())))
    path.chmod(0o755)
    return path, out


def cpu_by_role(pid: int, out: Path) -> dict[str, float]:
    if out.exists():
        out.unlink()
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while not out.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the server wrote no CPU figures")
        time.sleep(0.01)
    return dict(json.loads(out.read_text()))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("srcs", nargs="+", metavar="SRC")
    p.add_argument("--runs", type=int, default=250)
    p.add_argument("--proposal", choices=("echo", "storescu"), default="echo")
    a = p.parse_args()
    rq, echo = phases.associate_rq(PacsServer.ae, a.proposal), phases.echo_rq()
    with tempfile.TemporaryDirectory(prefix="assoc-threads-") as tmp:
        root = Path(tmp)
        started: list[tuple[PacsServer, Path]] = []
        try:
            for n, src in enumerate(a.srcs):
                exe, out = launcher(root, n, src)
                srv = phases._Variant(root / f"pacs{n}", exe).start()
                started.append((srv, out))
                for _ in range(10):     # warm-up, and the negotiation kept
                    phases.one_association(srv.port, rq, echo)
            before = [cpu_by_role(srv.pid, out) for srv, out in started]
            rows: list[list[list[float]]] = [[] for _ in started]
            for run in range(a.runs):
                shift = run % len(started)
                for n in [*range(shift, len(started)), *range(shift)]:
                    rows[n].append(phases.one_association(started[n][0].port, rq, echo))
            time.sleep(0.5)             # the last associations' threads end
            after = [cpu_by_role(srv.pid, out) for srv, out in started]
        finally:
            for srv, _ in started:
                srv.stop()
    print(f"{a.runs} associations each ({a.proposal} proposal), 1-minute load average "
          f"{os.getloadavg()[0]:.2f}; server CPU ms per association\n")
    print("| | " + " | ".join(a.srcs) + " |")
    print("| --- |" + " --- |" * len(a.srcs))
    for key in sorted({k for d in after for k in d}):
        cells = [(d.get(key, 0.0) - b.get(key, 0.0)) * 1e3 / a.runs
                 for d, b in zip(after, before, strict=True)]
        print(f"| {key} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    for i, step in enumerate(phases.STEPS):
        cells = [statistics.median(r[i] for r in rw) for rw in rows]
        print(f"| {step} (median ms) | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
