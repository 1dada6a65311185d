#!/usr/bin/env python3
"""Modality Worklist C-FIND at 10,000 items, next to a Q/R C-FIND of the same answer size.

    .venv/bin/python scripts/bench/bench_worklist.py [--items 10000] [--runs 20]
    .venv/bin/python scripts/bench/bench_worklist.py --cpu [--src A_SRC,B_SRC] [--pairs 3]
        [--runs 10] [--index DIR] [--transport events|stock]

The worklist gets --items items over 40 days and 10 stations (25 items per day and
station, as a modality asks: its own AE title, today); the Q/R index gets 10,000
instances in 50-instance studies through scripts/bench_query's filler, so that IMAGE by
SeriesInstanceUID also answers 25. One real server process answers whole `findscu`
runs (median of --runs, after a warm-up): `findscu -W` by date and station, by date
alone (250 answers), and `findscu -S` IMAGE by series.

`--cpu` measures server CPU per MWL response instead (as scripts/bench/find_cpu.py does
for Q/R): the worklist is built once into --index DIR; for each server under test
(`--src`: `src/` directories put first on PYTHONPATH, `-` for this worktree) one
server process answers --runs `findscu -W` runs by date (250 answers) and --runs by
date and station (25), its utime+stime read from /proc around each batch; CPU per
response = the difference / the responses' difference, so the association's own cost
cancels out. The servers alternate (A B, B A, ...) for --pairs rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.machinery
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))

from pacs_server.config import DatabaseConfig  # noqa: E402
from pacs_server.index.engine import create_engine, migrate  # noqa: E402
from pacs_server.index.worklist import WorklistRepository  # noqa: E402
from pacs_server.services.worklist import WorklistService  # noqa: E402
from pacs_server.services.worklist_import import items_from_json  # noqa: E402


def _bench_query() -> object:
    """scripts/bench_query (a script without .py) as a module: its filler and server."""
    path = str(REPO / "scripts" / "bench_query")
    loader = importlib.machinery.SourceFileLoader("bench_query", path)
    spec = importlib.util.spec_from_loader("bench_query", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_query"] = module
    loader.exec_module(module)
    return module


BQ = _bench_query()
DAYS, STATIONS = 40, 10
FIRST_DAY = date(2024, 12, 1)


def worklist_items(n: int) -> list[dict[str, object]]:
    out = []
    for i in range(n):
        day = FIRST_DAY + timedelta(days=i % DAYS)
        out.append({
            "patientId": f"W{i:06d}", "patientName": f"PATIENT^{i:06d}",
            "accessionNumber": f"ACC{i:07d}", "requestedProcedureId": f"RP{i:06d}",
            "requestedProcedureDescription": "CT Abdomen",
            "scheduledStationAeTitle": f"CT_{(i // DAYS) % STATIONS:02d}", "modality": "CT",
            "scheduledProcedureStepStartDate": day.strftime("%Y%m%d"),
            "scheduledProcedureStepStartTime": f"{8 + i % 10:02d}0000",
            "scheduledProcedureStepId": f"SPS{i:06d}",
            "scheduledProcedureStepDescription": "CT Abdomen",
            "scheduledProcedureStepStatus": "SCHEDULED"})
    return out


async def fill_worklist(db: Path, n: int) -> float:
    engine = create_engine(DatabaseConfig(path=str(db), synchronous="normal"))
    await migrate(engine)
    service = WorklistService(WorklistRepository(engine))
    datasets = [ds for _, ds in items_from_json(json.dumps(worklist_items(n)), "bench")]
    t0 = time.perf_counter()
    for first in range(0, n, 1000):       # the admin command's unit: one transaction per file
        await service.add(datasets[first:first + 1000])
    elapsed = time.perf_counter() - t0
    await engine.dispose()
    return elapsed


def findscu_w(port: int, keys: list[str], ae: str = "") -> tuple[float, int]:
    cmd = ["findscu", "-v", "-W", "-aec", ae or BQ.AE]  # type: ignore[attr-defined]
    for k in keys:
        cmd += ["-k", k]
    t0 = time.perf_counter()
    r = subprocess.run([*cmd, "127.0.0.1", str(port)], env=BQ.ENV,  # type: ignore[attr-defined]
                       capture_output=True, text=True, timeout=120)
    elapsed = (time.perf_counter() - t0) * 1000
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-500:])
    return elapsed, len(re.findall(r"Find Response: \d+ \(Pending\)", r.stderr))


def median_of(run: object, runs: int) -> tuple[float, int]:
    run()  # type: ignore[operator]
    times, n = [], 0
    for _ in range(runs):
        ms, n = run()  # type: ignore[operator]
        times.append(ms)
    return statistics.median(times), n


DAY = FIRST_DAY.strftime("%Y%m%d")
SPS = "ScheduledProcedureStepSequence[0]"
RETURNS = ["PatientName=", "PatientID=", "AccessionNumber=", f"{SPS}.Modality=",
           f"{SPS}.ScheduledProcedureStepStartTime=", f"{SPS}.ScheduledProcedureStepID="]
BY_DATE = [f"{SPS}.ScheduledProcedureStepStartDate={DAY}", *RETURNS]
BY_DATE_STATION = [*BY_DATE, f"{SPS}.ScheduledStationAETitle=CT_00"]


def cpu_per_response(args: argparse.Namespace) -> int:
    """Server CPU (ms) per MWL response, servers alternating; see the module docstring."""
    sys.path.insert(0, str(REPO / "scripts" / "bench"))
    from find_cpu import Server
    from idle_cpu import cpu_seconds
    index = Path(args.index)
    if not (index / "index.db").exists():
        index.mkdir(parents=True, exist_ok=True)
        secs = asyncio.run(fill_worklist(index / "index.db", args.items))
        print(f"worklist: {args.items} items in {secs:.0f} s", flush=True)

    def batch(srv: Server, keys: list[str]) -> tuple[float, int]:
        assert srv.proc is not None
        before, n = cpu_seconds(srv.proc.pid), 0
        for _ in range(args.runs):
            n = findscu_w(srv.port, keys, "PACS")[1]
        return cpu_seconds(srv.proc.pid) - before, n

    srcs = args.src.split(",")
    results: dict[str, list[float]] = {s: [] for s in srcs}
    loads: list[float] = []
    for round_ in range(args.pairs):
        for src in srcs if round_ % 2 == 0 else list(reversed(srcs)):
            with Server(index, src, args.transport) as srv:
                findscu_w(srv.port, BY_DATE, "PACS")       # warm-up
                big_cpu, big_n = batch(srv, BY_DATE)
                small_cpu, small_n = batch(srv, BY_DATE_STATION)
            ms = 1000 * (big_cpu - small_cpu) / (args.runs * (big_n - small_n))
            results[src].append(ms)
            loads.append(os.getloadavg()[0])
            print(f"round {round_ + 1} {src}: {ms:.3f} ms of server CPU per MWL response "
                  f"({big_n} and {small_n} matches, load {loads[-1]:.1f})", flush=True)
    print("\n| code | ms of server CPU per MWL response (rounds) | median |")
    print("| --- | --- | --- |")
    for src, rows in results.items():
        print(f"| {src} | " + " / ".join(f"{ms:.3f}" for ms in rows)
              + f" | **{statistics.median(rows):.3f}** |")
    print(f"\n1-minute load average {min(loads):.1f}-{max(loads):.1f}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=10000)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--cpu", action="store_true", help="server CPU per response, A/B")
    p.add_argument("--src", default="-", help="comma-separated src/ dirs ('-' = this tree)")
    p.add_argument("--pairs", type=int, default=3, help="alternating rounds (--cpu)")
    p.add_argument("--index", default="/tmp/bench-mwl-index", help="worklist index (--cpu)")
    p.add_argument("--transport", default=None, help="server.transport (default: events)")
    args = p.parse_args()
    if args.cpu:
        return cpu_per_response(args)
    day, sps, returns = DAY, SPS, RETURNS
    with tempfile.TemporaryDirectory(prefix="bench-mwl-") as tmp:
        work = Path(tmp)
        known: dict[str, str] = {}
        qr_s = asyncio.run(BQ.fill(work / "pacs.db", 0, 200, known))  # type: ignore[attr-defined]
        wl_s = asyncio.run(fill_worklist(work / "pacs.db", args.items))
        print(f"filled: 10,000 instances in {qr_s:.1f} s, {args.items} worklist items in "
              f"{wl_s:.1f} s ({args.items / wl_s:.0f} items/s)")
        with BQ.Server(work) as srv:  # type: ignore[attr-defined]
            rows = {
                "MWL by date and station": median_of(lambda: findscu_w(srv.port, [
                    f"{sps}.ScheduledProcedureStepStartDate={day}",
                    f"{sps}.ScheduledStationAETitle=CT_00", *returns]), args.runs),
                "MWL by date": median_of(lambda: findscu_w(srv.port, [
                    f"{sps}.ScheduledProcedureStepStartDate={day}", *returns]), args.runs),
                "Q/R IMAGE by SeriesInstanceUID": median_of(lambda: BQ.findscu(  # type: ignore[attr-defined]
                    srv.port, BQ.queries(known)["IMAGE by SeriesInstanceUID"]),  # type: ignore[attr-defined]
                    args.runs),
            }
    print("| query (whole findscu run, median ms) | matches | ms |")
    print("| --- | --- | --- |")
    for label, (ms, n) in rows.items():
        print(f"| {label} | {n} | {ms:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
