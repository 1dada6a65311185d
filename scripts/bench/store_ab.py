#!/usr/bin/env python3
"""A/B of the C-STORE path's CPU: two source trees of pacs_server, alternated.

    .venv/bin/python scripts/bench/store_ab.py --a /tmp/base/src [--b src] [--pairs 4]
        [--associations 1|4] [--workers 1|2|auto] [--count 1000] [--series-per-study 50]
        [--postgres]
    .venv/bin/python scripts/bench/store_ab.py --a /tmp/base/src --each --count 200

Each pair starts a fresh server (SQLite, durable defaults; with `--postgres` a fresh
database on a throw-away PostgreSQL server) from tree A and one from tree
B, in alternating order (AB, BA, AB...), and sends the small set over 1 storescu
association (or 4 at once; or, with `--each`, one storescu process and association per
instance, one after the other, as run.py's "one association each"). The tree is chosen
with PYTHONPATH, so both run in this virtualenv with the same libraries. Reported per
run and as medians: server CPU (every process of the server: supervisor and workers,
from /proc/<pid>/stat) per instance, instances/s, and the 1-minute load average. On a
shared machine the CPU per instance is the number to compare; the rate moves with
whatever else runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import clients  # noqa: E402
import generate  # noqa: E402
from servers import REPO, PacsServer  # noqa: E402
from workers_scaling import tree_cpu_s  # noqa: E402


def once(srv: PacsServer, dirs: list[Path], expected: int,
         each: bool = False) -> tuple[float, float, float]:
    """(instances/s, server CPU ms per instance, load average) of one fresh server."""
    srv.start()
    try:
        before = tree_cpu_s(srv.pid)
        if each:
            t = store_each(srv, sorted(p for d in dirs for p in d.rglob("*.dcm")))
        elif len(dirs) == 1:
            t = clients.store(srv.port, srv.ae, dirs)
        else:
            t = clients.store_parallel(srv.port, srv.ae, dirs)
        time.sleep(0.2)       # the association's end, on the server side
        cpu = tree_cpu_s(srv.pid) - before
        load = os.getloadavg()[0]
        n = srv.count()
        if t.returncode or n < expected:
            raise RuntimeError(f"{n}/{expected} stored: {t.error()} | {srv.log_tail()}")
        return n / t.seconds, cpu / n * 1000, load
    finally:
        srv.stop()
        srv.cleanup()


def postgres_cluster() -> Any:
    """A throw-away PostgreSQL server (the tests' own, tests/support/postgres.py)."""
    sys.path.insert(0, str(REPO / "tests"))
    from support.postgres import PostgresCluster, _postgres_bindir
    bindir = _postgres_bindir()
    if bindir is None:
        raise SystemExit("store_ab.py --postgres: PostgreSQL server binaries not found")
    return PostgresCluster(bindir)


def store_each(srv: PacsServer, files: list[Path]) -> clients.Timed:
    """One storescu run (one association) per file; the first failure, or the total."""
    started = time.perf_counter()
    for f in files:
        t = clients.store(srv.port, srv.ae, [f], timeout=60)
        if t.returncode:
            return t
    return clients.Timed(time.perf_counter() - started, 0, "")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", required=True, help="src directory of version A")
    p.add_argument("--b", default=str(REPO / "src"), help="src directory of version B")
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--associations", type=int, choices=(1, 4), default=1)
    p.add_argument("--workers", default="1")
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--transport", choices=("events", "stock"), default=None)
    p.add_argument("--series-per-study", type=int, default=2,
                   help="50 gives one instance per series (every instance a new series)")
    p.add_argument("--studies", type=int, default=None,
                   help="studies in the set (default count/50); --studies 1000 "
                        "--series-per-study 1 gives one instance per study (CR/DX-like)")
    p.add_argument("--data-dir", default="/tmp/pacs-bench-data")
    p.add_argument("--each", action="store_true",
                   help="one storescu process and association per instance")
    p.add_argument("--postgres", action="store_true",
                   help="the index on a throw-away PostgreSQL server (a fresh database "
                        "per run) instead of SQLite")
    a = p.parse_args()
    if a.transport:
        import servers
        servers.TRANSPORT = a.transport
    root = generate.small_set(Path(a.data_dir), a.count, a.series_per_study)
    if a.studies is not None:
        root = root.with_name(f"{root.name}-st{a.studies}")
    m = generate.generate(root, a.count, studies=a.studies,
                          series_per_study=a.series_per_study, split=4)
    dirs = [root] if a.associations == 1 else sorted(root.glob("part*"))
    trees = {"A": a.a, "B": a.b}
    rows: dict[str, list[tuple[float, float, float]]] = {"A": [], "B": []}
    cluster = postgres_cluster() if a.postgres else None
    try:
        with tempfile.TemporaryDirectory(prefix="pacs-ab-") as work:
            for pair in range(a.pairs):
                for name in ("AB" if pair % 2 == 0 else "BA"):
                    srv = PacsServer(Path(work) / f"{name}{pair}", workers=a.workers)
                    srv.env = {"PYTHONPATH": trees[name]}
                    if cluster is not None:
                        srv.database_url = cluster.create_database()
                    rate, cpu, load = once(srv, dirs, m.files, a.each)
                    rows[name].append((rate, cpu, load))
                    print(f"pair {pair} {name}: {rate:6.1f}/s  {cpu:5.2f} ms CPU/instance "
                          f" load {load:.1f}", flush=True)
    finally:
        if cluster is not None:
            cluster.stop()
    how = "one association each" if a.each else f"{a.associations} association(s)"
    print(f"\n{m.files} small instances, {how}, workers "
          f"{a.workers}, {'PostgreSQL' if a.postgres else 'SQLite'}; A = {a.a}, B = {a.b}\n")
    print("| version | CPU ms/instance (median) | runs | instances/s (median) | load |")
    print("| --- | --- | --- | --- | --- |")
    for name, got in rows.items():
        cpus = [c for _, c, _ in got]
        loads = [x for _, _, x in got]
        print(f"| {name} | {statistics.median(cpus):.2f} | "
              f"{', '.join(f'{c:.2f}' for c in cpus)} | "
              f"{statistics.median(r for r, _, _ in got):.0f} | "
              f"{min(loads):.1f}–{max(loads):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
