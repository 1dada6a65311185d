#!/usr/bin/env python3
"""How `server.workers: 2` splits concurrent associations over its workers.

    .venv/bin/python scripts/bench/accept_split.py [--runs 50] [--associations 4]
        [--a /tmp/base/src] [--b src] [--count 100]

Each run starts `--associations` storescu at once (the small set split in as many
parts) against one server per tree, alternated run by run, and counts from the server
log (`association.accepted`, which names the worker) how many each worker took: the
table is how often each split happened ("2/2", "3/1", "4/0" for 4), with the wall time
of the runs (a 3/1 run lasts as long as the busier worker needs) and the load average.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import clients  # noqa: E402
import generate  # noqa: E402
from servers import CALLING_AE, REPO, PacsServer  # noqa: E402


def accepted(log: Path, skip: int) -> tuple[list[int], int]:
    """Workers of the storescu associations accepted after line `skip`, and the lines."""
    lines = log.read_text(errors="replace").splitlines()
    workers = []
    for line in lines[skip:]:
        if "association.accepted" not in line:
            continue
        try:
            event = json.loads(line[line.index("{"):])
        except ValueError:
            continue
        if event.get("calling_ae") == CALLING_AE:
            workers.append(int(event.get("worker", 0)))
    return workers, len(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", default="", help="src directory of version A (none: B only)")
    p.add_argument("--b", default=str(REPO / "src"), help="src directory of version B")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--associations", type=int, default=4)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--data-dir", default="/tmp/pacs-bench-data")
    a = p.parse_args()
    root = Path(a.data_dir) / f"small-{a.count}-split{a.associations}"
    generate.generate(root, a.count, split=a.associations)
    dirs = sorted(root.glob("part*"))
    trees = {"A": a.a, "B": a.b} if a.a else {"B": a.b}
    splits: dict[str, collections.Counter[str]] = {n: collections.Counter() for n in trees}
    walls: dict[str, list[float]] = {n: [] for n in trees}
    loads: list[float] = []
    with tempfile.TemporaryDirectory(prefix="pacs-split-") as work:
        servers = {}
        for name, tree in trees.items():
            srv = PacsServer(Path(work) / name, workers="2")
            srv.log_level = "info"
            srv.duplicate_policy = "replace"
            srv.env = {"PYTHONPATH": tree}
            servers[name] = srv.start()
        # From here: not the readiness C-ECHO.
        marks = {n: accepted(s.workdir / "server.log", 0)[1] for n, s in servers.items()}
        try:
            for run in range(a.runs):
                for name in (list(trees) if run % 2 == 0 else list(reversed(trees))):
                    srv = servers[name]
                    t = clients.store_parallel(srv.port, srv.ae, dirs)
                    if t.returncode:
                        raise RuntimeError(f"{name}: {t.error()} | {srv.log_tail()}")
                    workers, marks[name] = accepted(srv.workdir / "server.log", marks[name])
                    per = collections.Counter(workers)
                    key = "/".join(str(n) for n in sorted((per[1], per[2]), reverse=True))
                    splits[name][key] += 1
                    walls[name].append(t.seconds)
                loads.append(os.getloadavg()[0])
        finally:
            for srv in servers.values():
                srv.stop()
    print(f"\n{a.runs} runs of {a.associations} storescu at once ({a.count} small "
          f"instances), workers 2; load {min(loads):.1f}-{max(loads):.1f}\n")
    print("| version | splits | wall s (median) |")
    print("| --- | --- | --- |")
    for name, tree in trees.items():
        shown = ", ".join(f"{k}: {v}" for k, v in sorted(splits[name].items()))
        print(f"| {name} ({tree}) | {shown} | {statistics.median(walls[name]):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
