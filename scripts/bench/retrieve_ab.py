#!/usr/bin/env python3
"""Server CPU per C-GET/C-MOVE sub-operation, two builds of pacs_server side by side.

    .venv/bin/python scripts/bench/retrieve_ab.py [--base-src DIR] [--pairs 5]
        [--count 500] [--profile OUT]

Starts this worktree's pacs_server (B) and, with `--base-src`, the same venv running
another checkout's `src/` (A: `PYTHONPATH=DIR python -m pacs_server`), loads the same
500-instance study into each, then alternates A/B: `getscu` of the study, then
`movescu` to a dcmtk `storescp`, `--pairs` times. Each measurement is the server's CPU
time (utime + stime from /proc/PID/stat) over the client run, divided by the number
of sub-operations, with the wall-clock rate and the 1-minute load average next to it;
the table gives medians. A busy machine changes wall time much more than CPU time.

`--profile OUT` instead runs `py-spy record --threads` (CPU samples, raw format) on B
over `--pairs` C-GETs and then as many C-MOVEs, and writes OUT-get.txt / OUT-move.txt
plus the top functions by self and inclusive samples.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import clients  # noqa: E402
import generate  # noqa: E402
from profile_store import cpu_seconds, hotspots, load, pyspy  # noqa: E402
from servers import ENV, PacsServer, StorescpServer, count_files  # noqa: E402

MOVE_AE = "BENCHDST"


class SourcePacsServer(PacsServer):
    """pacs_server from another checkout's `src/`, on this venv's interpreter."""

    def __init__(self, workdir: Path, src: Path, move_dest: tuple[str, int]) -> None:
        super().__init__(workdir, move_dest)
        self.src = src
        self.name = "base"

    def command(self) -> list[str]:
        cmd = super().command()
        return ["env", f"PYTHONPATH={self.src}", sys.executable, "-m", "pacs_server",
                *cmd[1:]]


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def one(srv: PacsServer, kind: str, study: str, n: int, work: Path,
        dest: StorescpServer) -> tuple[float, float, float]:
    """(server CPU ms per sub-operation, instances/s, load average) of one retrieve."""
    received = dest.workdir / "received"
    out = work / "get-out"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(received, ignore_errors=True)
    received.mkdir()
    load0 = loadavg()
    cpu0 = cpu_seconds(srv.pid)
    if kind == "get":
        t = clients.get(srv.port, srv.ae, study, out)
        got = count_files(out)
    else:
        t = clients.move(srv.port, srv.ae, MOVE_AE, study)
        got = count_files(received)
    cpu = cpu_seconds(srv.pid) - cpu0
    if got < n:
        raise SystemExit(f"{srv.name} {kind}: {got}/{n} received; {t.error()} "
                         f"{srv.log_tail()}")
    return 1000 * cpu / n, n / t.seconds, (load0 + loadavg()) / 2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base-src", type=Path, help="src/ of the build to compare with (A)")
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--count", type=int, default=500)
    p.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "retrieve-ab-data")
    p.add_argument("--profile", type=Path, help="py-spy the B server instead (OUT prefix)")
    a = p.parse_args(argv)
    manifest = generate.generate(a.data, a.count, studies=1, seed=900)
    study, n = manifest.studies[0]["study_uid"], manifest.files
    work = Path(tempfile.mkdtemp(prefix="retrieve-ab-"))
    dest = StorescpServer(work / "dest")
    dest.ae = MOVE_AE
    servers: list[PacsServer] = []
    try:
        dest.start()
        if a.base_src is not None and a.profile is None:
            servers.append(SourcePacsServer(work / "a", a.base_src.resolve(),
                                            (MOVE_AE, dest.port)))
        new = PacsServer(work / "b", (MOVE_AE, dest.port))
        new.name = "new"
        servers.append(new)
        for srv in servers:
            srv.start()
            t = clients.store(srv.port, srv.ae, [a.data])
            if srv.count() < n:
                raise SystemExit(f"{srv.name}: loading failed: {t.error()}")
        if a.profile is not None:
            return profile(new, study, n, work, dest, a.pairs, a.profile)
        results: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
        for r in range(a.pairs):
            order = servers if r % 2 == 0 else servers[::-1]
            for kind in ("get", "move"):
                for srv in order:
                    res = one(srv, kind, study, n, work, dest)
                    results.setdefault((srv.name, kind), []).append(res)
                    print(f"pair {r + 1} {kind:4} {srv.name:4}: {res[0]:.3f} ms CPU/sub-op, "
                          f"{res[1]:.0f}/s, load {res[2]:.2f}", flush=True)
        print()
        print("| build | C-GET CPU ms/sub-op | C-GET /s | C-MOVE CPU ms/sub-op | C-MOVE /s "
              "| load (median) |")
        print("| --- | --- | --- | --- | --- | --- |")
        for srv in servers:
            g, m = results[(srv.name, "get")], results[(srv.name, "move")]
            med = [statistics.median(x[i] for x in rows) for rows in (g, m) for i in (0, 1)]
            load_med = statistics.median(x[2] for x in g + m)
            print(f"| {srv.name} | {med[0]:.3f} | {med[1]:.0f} | {med[2]:.3f} | {med[3]:.0f} "
                  f"| {load_med:.2f} |")
        return 0
    finally:
        for srv in servers:
            srv.stop()
        dest.stop()
        shutil.rmtree(work, ignore_errors=True)


def profile(srv: PacsServer, study: str, n: int, work: Path, dest: StorescpServer,
            runs: int, out: Path) -> int:
    for kind in ("get", "move"):
        raw = out.with_name(f"{out.name}-{kind}.txt")
        spy = subprocess.Popen([pyspy(), "record", "--threads", "--gil", "--format", "raw",
                                "--rate", "250", "--output", str(raw), "--pid", str(srv.pid)],
                               env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)   # let py-spy attach before the load starts
        cpu = [one(srv, kind, study, n, work, dest) for _ in range(runs)]
        spy.send_signal(signal.SIGINT)
        _, err = spy.communicate(timeout=60)
        if not raw.exists():
            raise SystemExit(f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}")
        print(f"## {kind}: {statistics.median(c[0] for c in cpu):.3f} ms CPU/sub-op "
              f"(under py-spy), load {statistics.median(c[2] for c in cpu):.2f}")
        leaf, incl, total = hotspots(load(raw), top=25)
        print(f"samples {total}\n### self")
        for name, c in leaf:
            print(f"{100 * c / total:5.1f}%  {name}")
        print("### inclusive")
        for name, c in incl:
            print(f"{100 * c / total:5.1f}%  {name}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TCP_NODELAY", "1")
    sys.exit(main())
