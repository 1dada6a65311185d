#!/usr/bin/env python3
"""Server CPU per C-FIND response: whole `findscu` runs against a 10k index.

    .venv/bin/python scripts/bench/find_cpu.py [--index DIR] [--runs 10] [--pairs 3]
        [--src A_SRC,B_SRC]  [--transport events|stock]

The index (10,000 instances, 200 studies: scripts/bench_query's generator) is built
once into --index DIR and reused. For each server under test (`--src`: a list of
`src/` directories put first on PYTHONPATH, `-` for this worktree), a server process
answers `--runs` findscu runs of a STUDY query with ~150 matches (StudyDate over 19
of the 25 years) and of one with 1 match (the same keys, one PatientID); the server's
utime+stime is read from /proc/<pid>/stat around each batch. CPU per response =
(CPU of the large runs - CPU of the small runs) / (responses difference), so the
association and the process's idle cost cancel out. The servers alternate
(A B, B A, ...) for `--pairs` rounds; medians are printed with the load average, and
the median wall time of a whole findscu run of the large query.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.machinery
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from idle_cpu import cpu_seconds  # noqa: E402
from servers import ENV, HOST, free_port, wait_for_echo  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PY = REPO / ".venv" / "bin" / "python"
AE = "PACS"
SIZE = 10_000
BIG = ["QueryRetrieveLevel=STUDY", "StudyDate=20000101-20181231", "StudyInstanceUID=",
       "PatientName=", "PatientID=", "AccessionNumber=", "ModalitiesInStudy=",
       "NumberOfStudyRelatedInstances="]


def bench_query() -> Any:
    path = str(REPO / "scripts" / "bench_query")
    module = type(sys)("bench_query")
    module.__file__ = path
    importlib.machinery.SourceFileLoader("bench_query", path).exec_module(module)
    return module


def build_index(index: Path) -> dict[str, str]:
    """The 10k index in `index`/index.db (built once; its known keys beside it)."""
    known_path = index / "known.json"
    if known_path.exists():
        return dict(json.loads(known_path.read_text()))
    index.mkdir(parents=True, exist_ok=True)
    known: dict[str, str] = {}
    secs = asyncio.run(bench_query().fill(index / "index.db", 0, SIZE // 50, known))
    print(f"index: {SIZE} instances in {secs:.0f} s", flush=True)
    known_path.write_text(json.dumps(known))
    return known


class Server:
    """pacs_server on the shared index, its code from `src` ('-': this worktree)."""

    def __init__(self, index: Path, src: str, transport: str | None) -> None:
        self.index, self.src, self.transport = index, src, transport
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        work = self.index / f"run-{os.getpid()}"
        work.mkdir(exist_ok=True)
        self.port = free_port()
        server: dict[str, Any] = {"ae_title": AE, "host": HOST, "port": self.port}
        if self.transport:
            server["transport"] = self.transport
        cfg = {"server": server,
               "storage": {"directory": str(self.index / "archive")},
               "database": {"path": str(self.index / "index.db")},
               "logging": {"level": "warning", "file": ""},
               "monitoring": {"metrics_port": -1}}
        (work / "pacs.yaml").write_text(json.dumps(cfg))
        env = dict(ENV)
        if self.src != "-":
            env["PYTHONPATH"] = str(Path(self.src).resolve())
        self.proc = subprocess.Popen(
            [str(PY), "-m", "pacs_server", "--config", str(work / "pacs.yaml")], env=env,
            stdout=subprocess.DEVNULL, stderr=open(work / "server.log", "ab"),
            start_new_session=True)
        wait_for_echo(self.port, AE, self.proc)
        return self

    def __exit__(self, *exc: object) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def findscu(port: int, keys: list[str]) -> int:
    cmd = ["findscu", "-v", "-S", "-aec", AE]
    for k in keys:
        cmd += ["-k", k]
    r = subprocess.run([*cmd, HOST, str(port)], env=ENV, capture_output=True, text=True,
                       timeout=120)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-500:])
    return len(re.findall(r"Find Response: \d+ \(Pending\)", r.stderr))


def cpu_of(srv: Server, keys: list[str], runs: int) -> tuple[float, int, float]:
    """Server CPU seconds over `runs` findscu runs, the matches of one run, and the
    median wall time of a whole findscu run (ms)."""
    assert srv.proc is not None
    before = cpu_seconds(srv.proc.pid)
    n, times = 0, []
    for _ in range(runs):
        t0 = time.perf_counter()
        n = findscu(srv.port, keys)
        times.append(1000 * (time.perf_counter() - t0))
    return cpu_seconds(srv.proc.pid) - before, n, statistics.median(times)


def per_response(srv: Server, small: list[str], runs: int) -> tuple[float, int, float]:
    """Server CPU (ms) per pending response, the large query's match count and its
    median findscu run (ms)."""
    findscu(srv.port, BIG)       # warm-up: page cache, prepared statements
    findscu(srv.port, small)
    big_cpu, big_n, big_ms = cpu_of(srv, BIG, runs)
    small_cpu, small_n, _ = cpu_of(srv, small, runs)
    return 1000 * (big_cpu - small_cpu) / (runs * (big_n - small_n)), big_n, big_ms


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--index", default="/tmp/find-cpu-index", help="where the index lives")
    p.add_argument("--runs", type=int, default=10, help="findscu runs per measurement")
    p.add_argument("--pairs", type=int, default=3, help="alternating rounds")
    p.add_argument("--src", default="-", help="comma-separated src/ dirs ('-' = this tree)")
    p.add_argument("--transport", default=None, help="server.transport (default: events)")
    a = p.parse_args()
    index = Path(a.index)
    known = build_index(index)
    small = [k for k in BIG if not k.startswith("StudyDate")] + \
        [f"PatientID={known['patient_id']}", "StudyDate="]
    small = [k for k in small if k != "PatientID="]
    srcs = a.src.split(",")
    results: dict[str, list[tuple[float, float, float]]] = {s: [] for s in srcs}
    for round_ in range(a.pairs):
        order = srcs if round_ % 2 == 0 else list(reversed(srcs))
        for src in order:
            with Server(index, src, a.transport) as srv:
                ms, n, run_ms = per_response(srv, small, a.runs)
            load = os.getloadavg()[0]
            results[src].append((ms, run_ms, load))
            print(f"round {round_ + 1} {src}: {ms:.3f} ms of server CPU per response, "
                  f"findscu run {run_ms:.0f} ms ({n} matches, load {load:.1f})", flush=True)
    print("\n| code | ms of server CPU per C-FIND response (rounds) | median "
          "| whole findscu run, ms (median of rounds) |")
    print("| --- | --- | --- | --- |")
    for src, rows in results.items():
        print(f"| {src} | " + " / ".join(f"{ms:.3f}" for ms, _, _ in rows)
              + f" | **{statistics.median(ms for ms, _, _ in rows):.3f}** "
              f"| {statistics.median(run for _, run, _ in rows):.0f} |")
    loads = [load for rows in results.values() for _, _, load in rows]
    print(f"\n1-minute load average {min(loads):.1f}-{max(loads):.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
