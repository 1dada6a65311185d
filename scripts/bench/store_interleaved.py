#!/usr/bin/env python3
"""Server CPU per stored instance of two source trees, both running, batches interleaved.

    .venv/bin/python scripts/bench/store_interleaved.py --a OLD/src [--b src]
        [--count 1000] [--batch 50] [--associations 1|4] [--workers 1|2]

store_ab.py alternates whole runs, minutes apart: on a shared machine the load moves
between them by more than a small change saves. Here servers A and B run side by
side and each batch of the small set (one storescu association of `--batch` files, or
4 at once) goes to A, then to B (B then A on odd batches), so both see the same load
within a second. Printed per batch and as medians: the CPU ms per instance of each
server (all its processes, /proc/<pid>/stat), the wall ms per instance of the batch's
storescu run, the per-batch ratios B/A, and the load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import clients  # noqa: E402
import generate  # noqa: E402
from servers import REPO, PacsServer  # noqa: E402
from workers_scaling import tree_cpu_s  # noqa: E402


def batch_cpu_ms(srv: PacsServer, files: list[Path], associations: int
                 ) -> tuple[float, float]:
    """(server CPU ms per instance, wall ms per instance) of one batch."""
    before = tree_cpu_s(srv.pid)
    if associations == 1:
        t = clients.store(srv.port, srv.ae, files)
    else:
        t = clients.store_parallel(srv.port, srv.ae,
                                   [files[i::associations] for i in range(associations)])
    if t.returncode:
        raise RuntimeError(f"{srv.name}: {t.error()} | {srv.log_tail()}")
    return (tree_cpu_s(srv.pid) - before) / len(files) * 1000, t.seconds / len(files) * 1000


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", required=True, help="src directory of version A")
    p.add_argument("--b", default=str(REPO / "src"), help="src directory of version B")
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--associations", type=int, choices=(1, 4), default=1)
    p.add_argument("--workers", default="1")
    p.add_argument("--data-dir", default="/tmp/pacs-bench-data")
    a = p.parse_args()
    root = Path(a.data_dir) / f"small-{a.count}"
    generate.generate(root, a.count, split=4)
    files = sorted(root.rglob("*.dcm"))
    batches = [files[i:i + a.batch] for i in range(0, len(files), a.batch)]
    cpu: dict[str, list[float]] = {"A": [], "B": []}
    wall: dict[str, list[float]] = {"A": [], "B": []}
    loads: list[float] = []
    with tempfile.TemporaryDirectory(prefix="pacs-il-") as work:
        servers = {}
        for name, tree in (("A", a.a), ("B", a.b)):
            srv = PacsServer(Path(work) / name, workers=a.workers)
            srv.env = {"PYTHONPATH": tree}
            servers[name] = srv.start()
        try:
            for i, batch in enumerate(batches):
                for name in ("AB" if i % 2 == 0 else "BA"):
                    used, took = batch_cpu_ms(servers[name], batch, a.associations)
                    cpu[name].append(used)
                    wall[name].append(took)
                loads.append(os.getloadavg()[0])
                print(f"batch {i}: CPU A {cpu['A'][-1]:.2f} B {cpu['B'][-1]:.2f}, wall A "
                      f"{wall['A'][-1]:.1f} B {wall['B'][-1]:.1f} ms/instance, "
                      f"load {loads[-1]:.1f}", flush=True)
        finally:
            for srv in servers.values():
                srv.stop()
                srv.cleanup()
    ratios = [b / x for x, b in zip(cpu["A"], cpu["B"], strict=True) if x > 0]
    print(f"\n{len(files)} small instances in batches of {a.batch}, {a.associations} "
          f"association(s) per batch, workers {a.workers}; A = {a.a}, B = {a.b}\n")
    walls = [b / x for x, b in zip(wall["A"], wall["B"], strict=True) if x > 0]
    print("| | A (median) | B (median) | B/A per batch (median) | load |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| server CPU ms/instance | {statistics.median(cpu['A']):.2f} | "
          f"{statistics.median(cpu['B']):.2f} | {statistics.median(ratios):.3f} | "
          f"{min(loads):.1f}–{max(loads):.1f} |")
    print(f"| wall ms/instance (storescu) | {statistics.median(wall['A']):.1f} | "
          f"{statistics.median(wall['B']):.1f} | {statistics.median(walls):.3f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
