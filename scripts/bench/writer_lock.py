#!/usr/bin/env python3
"""Ingest with `server.workers: 2` chunk by chunk: where the index writers wait.

    .venv/bin/python scripts/bench/writer_lock.py [--chunks 3] [--chunk 2000]
        [--workers 2] [--databases sqlite,postgresql] [--tree /tmp/base/src]

For each database (one SQLite file, durable defaults; or a throw-away PostgreSQL 15
cluster, tests/support/postgres.py, fsync off as in the tests) one server receives
the ingest chunks of run.py (`ingest-<chunk>-<k>`, 4 storescu at once per chunk) one
after the other. Per chunk, from the server's /metrics and /proc: instances/s, server
CPU per instance (every process), index commits and instances per commit, the mean
wait per commit for the other worker's writer (`pacs_index_writer_lock_wait_seconds`,
SQLite only) and that wait as a share of the wall time of each worker's writer, and
the retried transactions (`pacs_index_write_retries_total`: busy = SQLITE_BUSY or a
serialisation failure, integrity = a row the other worker created). Markdown to stdout.
`--tree` runs another checkout's src/ (PYTHONPATH) in this virtualenv, for A/B pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

import clients  # noqa: E402
import generate  # noqa: E402
from servers import HOST, PacsServer, free_port  # noqa: E402
from workers_scaling import tree_cpu_s  # noqa: E402

from support.postgres import PostgresCluster, _postgres_bindir  # noqa: E402

SERIES = {
    "commits": "pacs_index_commit_batch_size_count",
    "indexed": "pacs_index_commit_batch_size_sum",
    "wait_n": "pacs_index_writer_lock_wait_seconds_count",
    "wait_s": "pacs_index_writer_lock_wait_seconds_sum",
    "busy": 'pacs_index_write_retries_total{reason="busy"}',
    "integrity": 'pacs_index_write_retries_total{reason="integrity"}',
}


class MeteredPacs(PacsServer):
    """pacs_server with its /metrics on, on SQLite or on `url`."""

    def __init__(self, workdir: Path, workers: str, url: str | None) -> None:
        super().__init__(workdir, workers=workers)
        self.url = url
        self.metrics_port = free_port()

    def command(self) -> list[str]:
        cmd = super().command()
        path = self.workdir / "pacs.yaml"
        cfg: dict[str, Any] = json.loads(path.read_text())
        cfg["monitoring"]["metrics_port"] = self.metrics_port
        if self.url:
            cfg["database"] = {"url": self.url}
        path.write_text(json.dumps(cfg, indent=1))
        return cmd

    def sample(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://{HOST}:{self.metrics_port}/metrics",
                                    timeout=30) as rsp:
            text = rsp.read().decode()
        out = dict.fromkeys(SERIES, 0.0)
        for line in text.splitlines():
            head, _, value = line.rpartition(" ")
            for key, name in SERIES.items():
                if head == name:
                    out[key] = float(value)
        return out


def chunks(data: Path, count: int, size: int) -> list[list[Path]]:
    """run.py's ingest chunks (same seeds, so the same files when already generated)."""
    out = []
    for k in range(count):
        root = data / f"ingest-{size}-{k}"
        generate.generate(root, size, None, 2, "small", 1000 + k, 4)
        out.append(sorted(root.glob("part*")))
    return out


def ingest(srv: MeteredPacs, parts: list[list[Path]], workers: int) -> list[dict[str, float]]:
    rows = []
    for k, dirs in enumerate(parts):
        before, cpu0 = srv.sample(), tree_cpu_s(srv.pid)
        t = clients.store_parallel(srv.port, srv.ae, dirs)
        if t.returncode:
            raise RuntimeError(f"chunk {k}: {t.error()} | {srv.log_tail()}")
        time.sleep(0.5)                  # the last commits' metrics written
        after, cpu1 = srv.sample(), tree_cpu_s(srv.pid)
        d = {key: after[key] - before[key] for key in SERIES}
        n = d["indexed"] or 1.0
        rows.append({"chunk": k, "rate": d["indexed"] / t.seconds,
                     "cpu_ms": (cpu1 - cpu0) * 1e3 / n, "commits": d["commits"],
                     "per_commit": d["indexed"] / (d["commits"] or 1.0),
                     "wait_ms": d["wait_s"] * 1e3 / (d["wait_n"] or 1.0),
                     "wait_share": d["wait_s"] / (t.seconds * workers),
                     "busy": d["busy"], "integrity": d["integrity"],
                     "load": os.getloadavg()[0]})
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--chunks", type=int, default=3)
    p.add_argument("--chunk", type=int, default=2000)
    p.add_argument("--workers", default="2")
    p.add_argument("--databases", default="sqlite,postgresql")
    p.add_argument("--data-dir", default="/tmp/pacs-bench-data")
    p.add_argument("--tree", default="", help="src directory to run (default: this one)")
    a = p.parse_args()
    parts = chunks(Path(a.data_dir), a.chunks, a.chunk)
    results: dict[str, list[dict[str, float]]] = {}
    cluster = None
    with tempfile.TemporaryDirectory(prefix="pacs-writer-lock-") as work:
        try:
            for db in a.databases.split(","):
                url = None
                if db == "postgresql":
                    bindir = _postgres_bindir()
                    if bindir is None:
                        raise SystemExit("PostgreSQL server binaries not found")
                    cluster = cluster or PostgresCluster(bindir)
                    url = cluster.create_database()
                srv = MeteredPacs(Path(work) / db, a.workers, url)
                if a.tree:
                    srv.env = {"PYTHONPATH": a.tree}
                srv.start()
                try:
                    results[db] = ingest(srv, parts, int(a.workers))
                finally:
                    srv.stop()
        finally:
            if cluster is not None:
                cluster.stop()
    print(f"\n{a.chunks} chunks of {a.chunk} small instances, 4 storescu each, workers "
          f"{a.workers}, {a.tree or 'src'}\n")
    print("| database | chunk | instances/s | CPU ms/instance | commits | instances/commit "
          "| lock wait ms/commit | wait share | busy retries | integrity retries | load |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for db, rows in results.items():
        for r in rows:
            lo, hi = int(r["chunk"]) * a.chunk, (int(r["chunk"]) + 1) * a.chunk
            print(f"| {db} | {lo // 1000}k→{hi // 1000}k | {r['rate']:.0f} | {r['cpu_ms']:.2f} "
                  f"| {r['commits']:.0f} | {r['per_commit']:.2f} | {r['wait_ms']:.2f} "
                  f"| {r['wait_share']:.1%} | {r['busy']:.0f} | {r['integrity']:.0f} "
                  f"| {r['load']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
