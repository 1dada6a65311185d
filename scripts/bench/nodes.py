#!/usr/bin/env python3
"""C-STORE throughput of one node vs two nodes on one PostgreSQL and one archive.

    .venv/bin/python scripts/bench/nodes.py                 # 1000 small instances
    .venv/bin/python scripts/bench/nodes.py --count 2000 --rounds 3

Each round starts a throw-away PostgreSQL cluster (the tests' own, tests/support/
postgres.py), then for each layout a fresh database and archive: `one` = one node
receiving 4 storescu; `two` = two nodes (node_name a and b, one archive directory)
receiving 2 storescu each. Instances/s is wall time from the first storescu start to
the last one's end; every instance is checked to be indexed once. The markdown table
goes to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures as cf
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

import clients  # noqa: E402
import generate  # noqa: E402
from servers import HOST, PACS_BIN, PacsServer  # noqa: E402

from support.postgres import PostgresCluster, _postgres_bindir  # noqa: E402


class PacsNode(PacsServer):
    """pacs_server as one node: PostgreSQL index, a shared archive, its own name."""

    def __init__(self, workdir: Path, archive: Path, url: str, node: str) -> None:
        super().__init__(workdir)
        self.archive, self.url, self.node = archive, url, node

    def command(self) -> list[str]:
        cfg: dict[str, Any] = {
            "server": {"ae_title": self.ae, "host": HOST, "port": self.port,
                       "node_name": self.node},
            "storage": {"directory": str(self.archive)},
            "database": {"url": self.url},
            "logging": {"level": "warning", "file": ""},
            "monitoring": {"metrics_port": -1},
        }
        path = self.workdir / "pacs.yaml"
        path.write_text(json.dumps(cfg, indent=1))   # JSON is valid YAML
        return [str(PACS_BIN), "--config", str(path)]


async def _count(url: str) -> int:
    import asyncpg
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM instances"))
    finally:
        await conn.close()


def measure(cluster: PostgresCluster, tmp: Path, data: Path, parts: list[Path],
            nodes: int, expected: int) -> float:
    url = cluster.create_database()
    archive = tmp / f"archive-{nodes}-{time.monotonic_ns()}"
    servers = [PacsNode(tmp / f"node{i}-{time.monotonic_ns()}", archive, url, f"node{i}")
               for i in range(nodes)]
    for s in servers:
        s.start()
    try:
        started = time.perf_counter()
        per_node = [parts[i::nodes] for i in range(nodes)]
        with cf.ThreadPoolExecutor(nodes) as pool:
            results = list(pool.map(lambda args: clients.store_parallel(
                args[0].port, args[0].ae, args[1]), zip(servers, per_node, strict=True)))
        elapsed = time.perf_counter() - started
        for r in results:
            if r.returncode:
                raise RuntimeError(f"storescu failed: {r.stderr[-500:]}")
        stored = asyncio.run(_count(url))
        if stored != expected:
            raise RuntimeError(f"{stored} instances indexed, {expected} sent")
        return expected / elapsed
    finally:
        for s in servers:
            s.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=1)
    a = ap.parse_args(argv)
    bindir = _postgres_bindir()
    if bindir is None:
        print("PostgreSQL server binaries not found", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="pacs-bench-nodes-") as t:
        tmp = Path(t)
        data = tmp / "data"
        generate.generate(data, a.count, split=4)
        parts = sorted(p for p in data.iterdir() if p.is_dir())
        cluster = PostgresCluster(bindir)
        rates: dict[int, list[float]] = {1: [], 2: []}
        try:
            for _ in range(a.rounds):
                for nodes in (1, 2):
                    rates[nodes].append(measure(cluster, tmp, data, parts, nodes, a.count))
        finally:
            cluster.stop()
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    print(f"| layout ({a.count} small, 4 associations, PostgreSQL) | instances/s |")
    print("| --- | --- |")
    print(f"| one node | {one:.0f} |")
    print(f"| two nodes, 2 associations each | {two:.0f} ({two / one:.2f}x) |")
    print(f"rounds: {a.rounds}; per round: one {[round(r) for r in rates[1]]}, "
          f"two {[round(r) for r in rates[2]]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
