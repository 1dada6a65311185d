#!/usr/bin/env python3
"""Benchmark pacs_server against Orthanc and dcmtk storescp on the same generated data.

    .venv/bin/python scripts/bench/run.py            # quick mode (a few minutes)
    .venv/bin/python scripts/bench/run.py --full     # everything: 100k index, 1 GB instance
    .venv/bin/python scripts/bench/run.py --phases store1,find --servers pacs_server,Orthanc
    .venv/bin/python scripts/bench/run.py --phases store4 --servers pacs_server,pacs_server-w2

Phases (each server measured in turn, the order rotating from run to run):
  store1    C-STORE N small instances over 1 association                  instances/s
  store4    the same N over 4 concurrent associations (4 storescu)         instances/s
  large     C-STORE 200 instances of 512x512 16-bit                        MB/s
  assoc     whole echoscu run (median of 20); 200 instances, one association each
  ingest    rate per chunk while the index grows (quick 0→10k by 2k, full 0→100k by 10k)
  find      C-FIND latency (whole findscu run, median of 10) at 10k and (full) 100k,
            the fifth query an answer of ~150 studies
  retrieve  C-GET (getscu) and C-MOVE (movescu → a storescp we start) of a 500-instance study
  huge      (full only) one ~1 GB instance: C-STORE then C-GET, peak RSS
Peak RSS of every server process is recorded for every phase.

Each store measurement starts a fresh server (empty archive and database in a temporary
directory). A failing measurement is recorded as "n/a (error: ...)" and the run goes on.
Results: a markdown table on stdout, bench-results/<timestamp>.md and .json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import urllib.error
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from subprocess import SubprocessError

sys.path.insert(0, str(Path(__file__).resolve().parent))

import clients  # noqa: E402
import generate  # noqa: E402
import servers  # noqa: E402
from clients import BenchError  # noqa: E402
from report import Results, environment  # noqa: E402
from servers import (  # noqa: E402
    REPO,
    OrthancServer,
    PacsServer,
    RssMonitor,
    Server,
    StorescpServer,
    count_files,
)

WIDE_ANSWER = 150   # matches of the long C-FIND answer
PHASES = ["store1", "store4", "large", "assoc", "ingest", "find", "retrieve", "huge"]
MEASURE_ERRORS = (BenchError, RuntimeError, OSError, SubprocessError, urllib.error.URLError,
                  ValueError, KeyError)
MOVE_AE = "BENCHDST"


def log(msg: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def kilo(n: int) -> str:
    return f"{n / 1000:g}k"


def rotate(items: list[str], k: int) -> list[str]:
    k %= max(1, len(items))
    return items[k:] + items[:k]


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.a = args
        self.work = work
        self.data = Path(args.data_dir)
        self.res = Results()
        self.live: list[Server] = []

    # ------------------------------------------------------------ helpers
    def make(self, name: str, tag: str, move_dest: tuple[str, int] | None = None,
             fork: bool = False) -> Server:
        wd = self.work / f"{name}-{tag}"
        if name == "pacs_server" or name.startswith("pacs_server-w"):
            # pacs_server-w2: server.workers 2 (pacs_server-wauto: workers auto)
            return PacsServer(wd, move_dest, workers=name.partition("-w")[2] or "1")
        if name == "Orthanc":
            return OrthancServer(wd, move_dest)
        if name == "storescp":
            return StorescpServer(wd, fork=fork)
        raise ValueError(f"unknown server {name}")

    def started(self, srv: Server) -> Server:
        self.live.append(srv)
        srv.start()
        return srv

    def stop(self, srv: Server) -> None:
        srv.stop()
        if srv in self.live:
            self.live.remove(srv)
        if not self.a.keep:
            srv.cleanup()

    def stop_all(self) -> None:
        for srv in list(self.live):
            try:
                self.stop(srv)
            except Exception as exc:  # keep stopping the others
                log(f"stopping {srv.name} failed: {exc}")

    def dataset(self, name: str, count: int, size: str = "small", seed: int = 1,
                split: int = 1, studies: int | None = None) -> generate.Manifest:
        return generate.generate(self.data / name, count, studies, 2, size, seed, split)

    def measure(self, row_key: str, label: str, unit: str, server: str,
                fn: Callable[[], tuple[float, float | None]], higher: bool = True,
                rss_phase: str | None = None) -> None:
        """Run one measurement; fn returns (value, peak RSS MB). Errors become n/a."""
        row = self.res.row(row_key, label, unit, higher)
        self.note_load()
        try:
            value, rss = fn()
        except MEASURE_ERRORS as exc:
            msg = str(exc) or exc.__class__.__name__
            log(f"  {server:12s} {label}: n/a ({msg})")
            self.res.add(row, server, None, error=msg)
            return
        log(f"  {server:12s} {label}: {value:.2f} {unit}"
            + (f", peak RSS {rss:.0f} MB" if rss else ""))
        self.res.add(row, server, value, rss_phase=rss_phase or label, rss_mb=rss)

    def note_load(self) -> None:
        """Other processes on the machine skew every number: keep the load average."""
        self.res.meta.setdefault("loadavg_1min", []).append(round(os.getloadavg()[0], 2))

    # ------------------------------------------------------------ C-STORE phases
    def _store_once(self, name: str, tag: str, dirs: list[Path], expected: int,
                    parallel: bool) -> tuple[float, float, float]:
        """Fresh server, send, check the count. Returns (seconds, received, peak RSS)."""
        srv = self.make(name, tag, fork=parallel)
        try:
            self.started(srv)
            mon = RssMonitor(srv.pid).start()
            if parallel:
                t = clients.store_parallel(srv.port, srv.ae, dirs)
            else:
                t = clients.store(srv.port, srv.ae, dirs)
            rss = mon.stop()
            n = srv.count()
            if n < expected:
                why = t.error() if t.returncode else srv.log_tail(2)
                raise BenchError(f"{n}/{expected} stored; {why}")
            return t.seconds, n, rss
        finally:
            self.stop(srv)

    def phase_store(self, key: str, label: str, manifest: generate.Manifest, root: Path,
                    parallel: bool, unit: str = "instances/s") -> None:
        dirs = sorted(root.glob("part*")) if parallel else [root]
        for r in range(self.a.runs):
            for name in rotate(self.a.servers, r):
                def once(name: str = name, r: int = r) -> tuple[float, float]:
                    secs, n, rss = self._store_once(name, f"{key}{r}", dirs, manifest.files,
                                                    parallel)
                    if unit == "MB/s":
                        return manifest.bytes / 1e6 / secs, rss
                    return n / secs, rss
                self.measure(key, label, unit, name, once)

    def phase_assoc(self, manifest: generate.Manifest, root: Path) -> None:
        files = sorted(root.rglob("*.dcm"))[: self.a.assoc_count]
        n = len(files)
        for r in range(self.a.runs):
            for name in rotate(self.a.servers, r):
                srv = self.make(name, f"assoc{r}")
                mon: RssMonitor | None = None
                try:
                    self.started(srv)
                    mon = RssMonitor(srv.pid).start()

                    def echo(srv: Server = srv) -> tuple[float, float | None]:
                        times = []
                        for _ in range(self.a.echo_reps):
                            t = clients.echo(srv.port, srv.ae)
                            if t.returncode:
                                raise BenchError(t.error())
                            times.append(t.seconds * 1000)
                        return statistics.median(times), None

                    def per_file(srv: Server = srv,
                                 mon: RssMonitor | None = mon) -> tuple[float, float]:
                        started = time.perf_counter()
                        for f in files:
                            t = clients.store(srv.port, srv.ae, [f], timeout=60)
                            if t.returncode:
                                raise BenchError(t.error())
                        secs = time.perf_counter() - started
                        got = srv.count()
                        if got < n:
                            raise BenchError(f"{got}/{n} stored")
                        assert mon is not None
                        return n / secs, mon.stop()

                    self.measure("echo", f"C-ECHO, whole echoscu run (median of "
                                 f"{self.a.echo_reps})", "ms", name, echo, higher=False)
                    self.measure("assoc_store", f"C-STORE {n} small, one association each",
                                 "instances/s", name, per_file,
                                 rss_phase="association overhead")
                finally:
                    if mon is not None:
                        mon.stop()
                    self.stop(srv)

    # ------------------------------------------------------------ index phases
    def phase_index(self) -> None:
        """Grow one index per server, with C-FIND and C-GET/C-MOVE at the checkpoints."""
        names = [s for s in self.a.servers if s != "storescp"]
        if not names:
            return
        total, chunk = self.a.ingest_total, self.a.ingest_chunk
        n_chunks = max(1, total // chunk)
        log(f"generating {n_chunks} ingest chunks of {chunk} and the retrieve study")
        chunks = [self.dataset(f"ingest-{chunk}-{k}", chunk, seed=1000 + k, split=4)
                  for k in range(n_chunks)]
        retrieve = self.dataset("retrieve-500", self.a.retrieve_count, seed=900, studies=1)
        dest = StorescpServer(self.work / "move-dest")
        dest.ae = MOVE_AE
        servers: dict[str, Server] = {}
        stored: list[generate.Manifest] = []
        expected = dict.fromkeys(names, 0)
        try:
            self.started(dest)
            for name in names:
                servers[name] = self.started(self.make(name, "index", (MOVE_AE, dest.port)))
            checkpoints = {min(self.a.first_checkpoint, total), total}
            for k, m in enumerate(chunks):
                lo, hi = k * chunk, (k + 1) * chunk
                label = f"Ingest {kilo(lo)}→{kilo(hi)} (4 assoc.)"
                dirs = sorted((self.data / f"ingest-{chunk}-{k}").glob("part*"))
                for name in rotate(names, k):
                    srv = servers[name]

                    def ingest(srv: Server = srv, name: str = name, dirs: list[Path] = dirs,
                               m: generate.Manifest = m) -> tuple[float, float]:
                        mon = RssMonitor(srv.pid).start()
                        t = clients.store_parallel(srv.port, srv.ae, dirs)
                        rss = mon.stop()
                        expected[name] += m.files
                        got = srv.count()
                        if got < expected[name]:
                            why = t.error() if t.returncode else srv.log_tail(2)
                            want, expected[name] = expected[name], got
                            raise BenchError(f"{got}/{want} in index; {why}")
                        return m.files / t.seconds, rss
                    if "ingest" in self.a.phases:
                        self.measure(f"ingest{k}", label, "instances/s", name, ingest,
                                     rss_phase="ingest")
                    else:
                        ingest()
                stored.append(m)
                if hi in checkpoints:
                    at = kilo(hi)
                    if hi == min(checkpoints):
                        self._load_retrieve_study(servers, retrieve, expected)
                        stored.append(retrieve)
                    if "find" in self.a.phases:
                        self.phase_find(servers, stored, at)
                    if "retrieve" in self.a.phases and hi == min(checkpoints):
                        self.phase_retrieve(servers, retrieve, dest, at)
        finally:
            for srv in [*servers.values(), dest]:
                self.stop(srv)

    def _load_retrieve_study(self, servers: dict[str, Server], m: generate.Manifest,
                             expected: dict[str, int]) -> None:
        for name, srv in servers.items():
            t = clients.store(srv.port, srv.ae, [self.data / "retrieve-500"])
            expected[name] += m.files
            if t.returncode:
                log(f"  {name}: loading the retrieve study failed: {t.error()}")

    def phase_find(self, servers: dict[str, Server], stored: list[generate.Manifest],
                   at: str) -> None:
        studies = [s for m in stored for s in m.studies]
        first = stored[0].studies
        pid = first[min(5, len(first) - 1)]["patient_id"]
        series = first[min(3, len(first) - 1)]
        lo, hi = "20150101", "20151231"
        # The earliest ~150 studies by date, whatever the index size: an answer as long
        # as the issue-12 target's (each response's own cost shows).
        dates = sorted(s["study_date"] for s in studies)
        wide_lo, wide_hi = dates[0], dates[min(WIDE_ANSWER, len(dates)) - 1]
        queries = [
            ("pid", f"STUDY, exact PatientID @{at}",
             ["QueryRetrieveLevel=STUDY", f"PatientID={pid}"],
             sum(s["patient_id"] == pid for s in studies)),
            ("name", f"STUDY, PatientName=SMI* @{at}",
             ["QueryRetrieveLevel=STUDY", "PatientName=SMI*"],
             sum(s["patient_name"].upper().startswith("SMI") for s in studies)),
            ("date", f"STUDY, StudyDate {lo}-{hi} @{at}",
             ["QueryRetrieveLevel=STUDY", f"StudyDate={lo}-{hi}"],
             sum(lo <= s["study_date"] <= hi for s in studies)),
            ("wide", f"STUDY, StudyDate {wide_lo}-{wide_hi} @{at}",
             ["QueryRetrieveLevel=STUDY", f"StudyDate={wide_lo}-{wide_hi}"],
             sum(wide_lo <= s["study_date"] <= wide_hi for s in studies)),
            ("image", f"IMAGE, by SeriesInstanceUID @{at}",
             ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={series['study_uid']}",
              f"SeriesInstanceUID={series['series'][0]['uid']}", "SOPInstanceUID",
              "InstanceNumber"],
             series["series"][0]["count"]),
        ]
        study_keys = ["StudyInstanceUID", "PatientName", "PatientID", "StudyDate",
                      "AccessionNumber", "StudyDescription", "ModalitiesInStudy",
                      "NumberOfStudyRelatedInstances"]
        names = list(servers)
        for key, label, keys, want in queries:
            if keys[0].endswith("STUDY"):
                keys = keys + [k for k in study_keys if not any(q.startswith(k) for q in keys)]
            times: dict[str, list[float]] = {n: [] for n in names}
            errors: dict[str, str] = {}
            counts: dict[str, int] = {}
            self.note_load()
            for i in range(self.a.find_reps):
                for name in rotate(names, i):
                    if name in errors:
                        continue
                    srv = servers[name]
                    mon = RssMonitor(srv.pid).start()
                    try:
                        t, n = clients.find(srv.port, srv.ae, keys)
                    except MEASURE_ERRORS as exc:
                        errors[name] = str(exc)
                        continue
                    finally:
                        rss = mon.stop()
                    if t.returncode:
                        errors[name] = t.error()
                        continue
                    times[name].append(t.seconds * 1000)
                    counts[name] = n
                    self.res.rss.setdefault(f"C-FIND @{at}", {})
                    b = self.res.rss[f"C-FIND @{at}"]
                    b[name] = max(b.get(name, 0.0), rss)
            row = self.res.row(f"find_{key}_{at}", f"C-FIND {label} (expect {want})", "ms",
                               higher_is_better=False)
            for name in names:
                if name in errors and not times[name]:
                    self.res.add(row, name, None, error=errors[name])
                    log(f"  {name:12s} C-FIND {label}: n/a ({errors[name]})")
                    continue
                med = statistics.median(times[name])
                note = None
                if counts.get(name) != want:
                    note = f"returned {counts.get(name)} matches, expected {want}"
                c = row.cell(name)
                c.values.extend(times[name])
                if note:
                    c.notes.append(note)
                log(f"  {name:12s} C-FIND {label}: {med:.1f} ms, {counts.get(name)} matches"
                    + (f" (expected {want})" if note else ""))

    def phase_retrieve(self, servers: dict[str, Server], m: generate.Manifest,
                       dest: StorescpServer, at: str) -> None:
        study = m.studies[0]["study_uid"]
        n = m.files
        names = list(servers)
        received = dest.workdir / "received"
        for r in range(self.a.runs):
            for name in rotate(names, r):
                srv = servers[name]

                def cget(srv: Server = srv, name: str = name, r: int = r) -> tuple[float, float]:
                    out = self.work / f"get-{name}-{r}"
                    try:
                        mon = RssMonitor(srv.pid).start()
                        t = clients.get(srv.port, srv.ae, study, out)
                        rss = mon.stop()
                        got = count_files(out)
                        if got < n:
                            raise BenchError(f"{got}/{n} received; "
                                             f"{t.error() if t.returncode else ''}")
                        return got / t.seconds, rss
                    finally:
                        shutil.rmtree(out, ignore_errors=True)

                def cmove(srv: Server = srv) -> tuple[float, float]:
                    shutil.rmtree(received, ignore_errors=True)
                    received.mkdir()
                    mon = RssMonitor(srv.pid).start()
                    t = clients.move(srv.port, srv.ae, MOVE_AE, study)
                    rss = mon.stop()
                    got = count_files(received)
                    if got < n:
                        raise BenchError(f"{got}/{n} received by {MOVE_AE}; "
                                         f"{t.error() if t.returncode else ''}")
                    return got / t.seconds, rss

                self.measure("cget", f"C-GET study of {n} @{at}", "instances/s", name, cget,
                             rss_phase=f"C-GET @{at}")
                self.measure("cmove", f"C-MOVE study of {n} @{at}", "instances/s", name,
                             cmove, rss_phase=f"C-MOVE @{at}")

    # ------------------------------------------------------------ the 1 GB instance
    def phase_huge(self) -> None:
        gb = self.a.huge_gb
        frames = max(1, int(gb * (1 << 30) / (512 * 512 * 2)))
        path = self.data / f"huge-{frames}" / "huge.dcm"
        if not path.exists():
            log(f"writing the {gb:g} GB instance ({frames} frames)")
            generate.write_huge(path, frames=frames)
        info_bytes = path.stat().st_size
        for name in [s for s in self.a.servers if s != "storescp"]:
            srv = self.make(name, "huge")
            try:
                self.started(srv)

                def put(srv: Server = srv) -> tuple[float, float]:
                    mon = RssMonitor(srv.pid).start()
                    t = clients.store(srv.port, srv.ae, [path], timeout=900)
                    rss = mon.stop()
                    if srv.count() < 1:
                        raise BenchError(f"not stored; {t.error() if t.returncode else ''}")
                    return info_bytes / 1e6 / t.seconds, rss

                def fetch(srv: Server = srv, name: str = name) -> tuple[float, float]:
                    out = self.work / f"huge-get-{name}"
                    try:
                        mon = RssMonitor(srv.pid).start()
                        t = clients.get(srv.port, srv.ae, generate.uid(1, "huge-study", frames),
                                        out, timeout=900)
                        rss = mon.stop()
                        if count_files(out) < 1:
                            raise BenchError(f"nothing received; "
                                             f"{t.error() if t.returncode else ''}")
                        return info_bytes / 1e6 / t.seconds, rss
                    finally:
                        shutil.rmtree(out, ignore_errors=True)

                label = f"{info_bytes / 1e9:.2f} GB instance"
                self.measure("huge_store", f"C-STORE one {label}", "MB/s", name, put,
                             rss_phase=f"C-STORE {label}")
                self.measure("huge_get", f"C-GET one {label}", "MB/s", name, fetch,
                             rss_phase=f"C-GET {label}")
            finally:
                self.stop(srv)

    # ------------------------------------------------------------ all
    def run(self) -> None:
        a = self.a
        if {"store1", "store4", "assoc"} & set(a.phases):
            small = self.dataset(f"small-{a.small_count}", a.small_count, split=4)
            root = self.data / f"small-{a.small_count}"
        if "store1" in a.phases:
            log(f"phase store1: {small.files} small instances, 1 association")
            self.phase_store("store1", f"C-STORE {small.files} small, 1 association",
                             small, root, parallel=False)
        if "store4" in a.phases:
            log(f"phase store4: {small.files} small instances, 4 associations")
            self.phase_store("store4", f"C-STORE {small.files} small, 4 associations",
                             small, root, parallel=True)
        if "large" in a.phases:
            large = self.dataset(f"large-{a.large_count}", a.large_count, size="large",
                                 seed=2, studies=max(1, a.large_count // 50))
            log(f"phase large: {large.files} instances, {large.bytes / 1e6:.0f} MB")
            self.phase_store("large", f"C-STORE {large.files} x 512x512 "
                             f"({large.bytes / 1e6:.0f} MB), 1 association",
                             large, self.data / f"large-{a.large_count}", parallel=False,
                             unit="MB/s")
        if "assoc" in a.phases:
            log("phase assoc: association overhead")
            self.phase_assoc(small, root)
        if {"ingest", "find", "retrieve"} & set(a.phases):
            log(f"phase ingest/find/retrieve: index 0→{a.ingest_total}")
            self.phase_index()
        if "huge" in a.phases:
            log("phase huge")
            self.phase_huge()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--full", action="store_true",
                   help="index to 100k in 10k chunks, C-FIND at 10k and 100k, the 1 GB instance")
    p.add_argument("--runs", type=int, default=3, help="runs per measurement (default 3)")
    p.add_argument("--servers", default="pacs_server,Orthanc,storescp",
                   help="comma list of pacs_server, Orthanc, storescp")
    p.add_argument("--phases", help=f"comma list of {', '.join(PHASES)} "
                   "(default: all but huge; --full adds huge)")
    p.add_argument("--small-count", type=int, default=1000)
    p.add_argument("--large-count", type=int, default=200)
    p.add_argument("--assoc-count", type=int, default=200)
    p.add_argument("--echo-reps", type=int, default=20)
    p.add_argument("--find-reps", type=int, default=10)
    p.add_argument("--retrieve-count", type=int, default=500)
    p.add_argument("--ingest-total", type=int, help="quick: 10000, full: 100000")
    p.add_argument("--ingest-chunk", type=int, help="quick: 2000, full: 10000")
    p.add_argument("--first-checkpoint", type=int, default=10000,
                   help="index size of the first C-FIND/C-GET/C-MOVE checkpoint")
    p.add_argument("--huge-gb", type=float, default=1.0)
    p.add_argument("--data-dir", default="/tmp/pacs-bench-data",
                   help="generated datasets, reused between runs (deterministic)")
    p.add_argument("--work-dir", help="parent of the temporary server directories "
                   "(default: system temp, which must not be tmpfs for honest fsync)")
    p.add_argument("--out", default=str(REPO / "bench-results"))
    p.add_argument("--keep", action="store_true", help="keep server directories")
    p.add_argument("--pacs-bin", help="the pacs_server executable to start (default: the "
                   "venv's; scripts/bench/what_if.py measures proposed pynetdicom changes)")
    p.add_argument("--transport", choices=("events", "stock"),
                   help="pacs_server's server.transport (default: its default, events)")
    a = p.parse_args(argv)
    if a.pacs_bin:
        servers.PACS_BIN = Path(a.pacs_bin).resolve()
    servers.TRANSPORT = a.transport
    a.servers = [s.strip() for s in a.servers.split(",") if s.strip()]
    a.phases = ([s.strip() for s in a.phases.split(",")] if a.phases
                else [ph for ph in PHASES if a.full or ph != "huge"])
    unknown = set(a.phases) - set(PHASES)
    if unknown:
        p.error(f"unknown phase(s): {', '.join(sorted(unknown))}")
    a.ingest_total = a.ingest_total or (100_000 if a.full else 10_000)
    a.ingest_chunk = a.ingest_chunk or (10_000 if a.full else 2_000)
    return a


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("storescu", "findscu", "getscu", "movescu", "echoscu", "storescp"):
        if shutil.which(tool) is None:
            print(f"run.py: dcmtk's {tool} is not installed", file=sys.stderr)
            return 2
    if "Orthanc" in args.servers and shutil.which("Orthanc") is None:
        print("run.py: Orthanc is not installed (apt-get install orthanc)", file=sys.stderr)
        return 2
    # SIGTERM unwinds like Ctrl-C so that the finally blocks stop every server.
    signal.signal(signal.SIGTERM, _interrupt)
    work = Path(tempfile.mkdtemp(prefix="pacs-bench-", dir=args.work_dir))
    bench = Bench(args, work)
    started = time.time()
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    interrupted = False
    try:
        bench.res.meta = {"mode": "full" if args.full else "quick", "started": stamp,
                          "args": {k: v for k, v in vars(args).items()},
                          "env": environment(work)}
        bench.run()
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: stopping servers, writing partial results")
    finally:
        bench.stop_all()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    bench.res.meta["wall_seconds"] = round(time.time() - started)
    env = bench.res.meta["env"]
    loads = bench.res.meta.get("loadavg_1min", [])
    index = ({"ingest", "find", "retrieve"} & set(args.phases)
             and f"; index to {kilo(args.ingest_total)}" or "")
    header = (f"# pacs_server benchmark, {bench.res.meta['mode']} mode "
              f"(phases {','.join(args.phases)}{index}), {stamp}"
              f"{' (interrupted)' if interrupted else ''}\n\n"
              f"{env['nproc']} CPUs ({env['cpu']}), {env['memory_gb']} GB RAM, "
              f"disk {env['disk']}, kernel {env['kernel']}; pacs_server {env['pacs_server_commit']}"
              f"{' (+local changes)' if env['pacs_server_dirty'] else ''}, {env['orthanc']}, "
              f"dcmtk {env['dcmtk']}; runs={args.runs}; wall time "
              f"{bench.res.meta['wall_seconds']} s; 1-min load average at the measurements "
              f"{min(loads, default=0):.1f}–{max(loads, default=0):.1f} "
              f"(median {statistics.median(loads) if loads else 0:.1f})")
    md, js = bench.res.save(Path(args.out), stamp, header)
    print(header + "\n\n" + bench.res.markdown())
    print(f"\nwritten: {md} and {js}", file=sys.stderr)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
