#!/usr/bin/env python3
"""Where does pacs_server's time go per C-STORE? py-spy over one storescu association.

    .venv/bin/python scripts/bench/profile_store.py [--count 1000] [--runs 2] [--out FILE]

1. Timing without a profiler, each on a fresh server: durable defaults (storage.fsync
   on, database.synchronous full) and the same with fsync off + synchronous normal, so
   the difference is what the disk costs. Wall and server CPU time per instance.
2. `py-spy record --threads --idle` (wall clock: where the association thread waits)
   and `py-spy record --threads` (CPU: what is actually computed) while storescu sends
   the instances over one association; the raw stacks are kept next to the report.
3. A markdown summary: time per thread role, the association thread's wall time by
   stage, and the top functions by CPU (file:function, share of samples).

py-spy needs ptrace (root, or kernel.yama.ptrace_scope=0): pip install py-spy.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import clients  # noqa: E402
import generate  # noqa: E402
from servers import ENV, REPO, PacsServer  # noqa: E402

CLK_TCK = 100

# Thread name (py-spy) -> role.
ROLES = [
    ("AcceptorThread", "association thread (DIMSE handler)"),
    ("run_reactor", "DUL reader thread (pynetdicom)"),
    ("MainThread", "event loop (index writer, bridge)"),
    ("_connection_worker_thread", "aiosqlite connection thread"),
    ("asyncio_", "asyncio.to_thread pool"),
    ("AcceptorServer", "listener (accept loop)"),
    ("process_request_thread", "association setup"),
]

# Stages of the association thread, first match from the leaf upwards wins.
STAGES = [
    ("waiting for the index commit (LoopBridge.run → event loop)", r"LoopBridge\.run"),
    ("structlog / logging", r"structlog/|logging/__init__"),
    ("metrics (prometheus_client)", r"prometheus_client/"),
    ("parse header: pydicom dcmread / record", r"pydicom/filereader|pacs_server/services/ingest"),
    ("file write + fsync + place (storage/)", r"pacs_server/storage/"),
    ("archive bookkeeping (services/archive)", r"pacs_server/services/archive"),
    ("pynetdicom: encode/send C-STORE-RSP", r"send_msg|encode_msg|dsutils\.py\)|filewriter"),
    ("pynetdicom: decode request, dispatch", r"pynetdicom/(dimse|service_class|events|dsutils)"),
    ("pynetdicom reactor: 1 ms polling sleep / waiting for next message",
     r"Association\._run_reactor"),
]


def pyspy() -> str:
    for cand in (REPO / ".venv" / "bin" / "py-spy", shutil.which("py-spy")):
        if cand and Path(cand).exists():
            return str(cand)
    raise SystemExit("py-spy not found: .venv/bin/pip install py-spy")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def timed_run(work: Path, root: Path, n: int, fsync: bool, sync: str, tag: str,
              profile: list[str] | None = None) -> tuple[float, float]:
    """Fresh server, one storescu association; returns (wall s, server CPU s)."""
    srv = PacsServer(work / tag, fsync=fsync, synchronous=sync)
    spy: subprocess.Popen[bytes] | None = None
    try:
        srv.start()
        if profile is not None:
            spy = subprocess.Popen([*profile, "--pid", str(srv.pid)], env=ENV,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(1.0)   # let py-spy attach before the load starts
        cpu0 = cpu_seconds(srv.pid)
        t = clients.store(srv.port, srv.ae, [root], timeout=900)
        cpu = cpu_seconds(srv.pid) - cpu0
        if spy is not None:
            spy.send_signal(signal.SIGINT)   # py-spy writes its output on Ctrl-C
            try:
                spy.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.communicate(timeout=10)
            spy = None
        got = srv.count()
        if got < n:
            raise SystemExit(f"only {got}/{n} stored: {t.error()}")
        return t.seconds, cpu
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
            spy.communicate(timeout=10)
        srv.stop()
        srv.cleanup()


def load(path: Path) -> list[tuple[str, list[str], int]]:
    """py-spy raw lines -> (thread name, frames root→leaf without line numbers, count)."""
    out = []
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        parts = stack.split(";")
        thread = parts[0].strip()          # "thread (TID): name", unique per thread
        frames = [re.sub(r":\d+\)$", ")", f) for f in parts[1:]]
        out.append((thread, frames, int(n)))
    return out


def role(thread: str) -> str:
    for key, name in ROLES:
        if key in thread:
            return name
    return "other threads"


def by_role(samples: list[tuple[str, list[str], int]]) -> collections.Counter[str]:
    c: collections.Counter[str] = collections.Counter()
    for thread, _, n in samples:
        c[role(thread)] += n
    return c


def stages(samples: list[tuple[str, list[str], int]]) -> collections.Counter[str]:
    """Wall time of the association thread(s) that served the C-STOREs, by stage."""
    serving = {t for t, frames, _ in samples if any("handle_store" in f for f in frames)}
    c: collections.Counter[str] = collections.Counter()
    for thread, frames, n in samples:
        if thread not in serving:
            continue
        if not any("Association._run_reactor" in f for f in frames):
            c["association negotiation / release (outside the DIMSE reactor)"] += n
            continue
        for frame in reversed(frames):
            hit = next((name for name, pat in STAGES if re.search(pat, frame)), None)
            if hit:
                c[hit] += n
                break
        else:
            c["other"] += n
    return c


def short(frame: str) -> str:
    """'Func (pkg/mod.py)' -> 'pkg/mod.py:Func'."""
    m = re.match(r"(.*) \((.*)\)$", frame)
    return f"{m.group(2)}:{m.group(1)}" if m else frame


def hotspots(samples: list[tuple[str, list[str], int]], top: int = 15
             ) -> tuple[list[tuple[str, int]], list[tuple[str, int]], int]:
    """Self (leaf) and inclusive samples per function over all threads."""
    leaf: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for _, frames, n in samples:
        if not frames:
            continue
        total += n
        leaf[short(frames[-1])] += n
        for f in set(frames):
            incl[short(f)] += n
    return leaf.most_common(top), incl.most_common(top + 25), total


def pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "–"


def analysis(wall_path: Path, cpu_path: Path) -> list[str]:
    """The markdown sections summarising two py-spy raw files."""
    wall_s = load(wall_path)
    cpu_s = load(cpu_path)
    roles_c = by_role(cpu_s)
    lines = ["", "## Threads: share of CPU samples", "",
             "| thread role | CPU samples | share of all CPU samples |",
             "| --- | --- | --- |"]
    cpu_total = sum(roles_c.values())
    for r, c in roles_c.most_common():
        lines.append(f"| {r} | {c} | {pct(c, cpu_total)} |")
    lines += ["", "## Association thread, wall clock by stage", "",
              "Share of the samples of the thread that served the C-STOREs "
              "(py-spy --idle: waiting counts).", "",
              "| stage | share |", "| --- | --- |"]
    st_counts = stages(wall_s)
    assoc_total = sum(st_counts.values())
    for st, c in st_counts.most_common():
        lines.append(f"| {st} | {pct(c, assoc_total)} |")
    leaf, incl, total = hotspots(cpu_s)
    lines += ["", "## Top functions by CPU (all threads, self time)", "",
              "| function (file:function) | self share |", "| --- | --- |"]
    lines += [f"| `{f}` | {pct(c, total)} |" for f, c in leaf]
    lines += ["", "## Top functions by CPU (all threads, inclusive)", "",
              "| function (file:function) | inclusive share |", "| --- | --- |"]
    skip = ("threading.py", "<module>", "runners.py", "cli.py", "base_events.py:Base",
            "events.py:Handle._run")
    lines += [f"| `{f}` | {pct(c, total)} |" for f, c in incl
              if not any(s in f for s in skip)][:25]
    lines += ["", f"Raw stacks: {wall_path} and {cpu_path} (py-spy raw format; "
              "flamegraph.pl renders them)."]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--size", choices=["small", "large"], default="small",
                   help="small: CT_small (39 KB); large: 512x512 16-bit (520 KB), as run.py")
    p.add_argument("--runs", type=int, default=2, help="timing runs per configuration")
    p.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument("--data-dir", default="/tmp/pacs-bench-data")
    p.add_argument("--out", help="markdown file (default bench-results/profile-<stamp>.md)")
    p.add_argument("--from-raw", nargs=2, metavar=("WALL", "CPU"),
                   help="only summarise two existing py-spy raw files")
    a = p.parse_args(argv)
    if a.from_raw:
        print("\n".join(analysis(Path(a.from_raw[0]), Path(a.from_raw[1]))))
        return 0
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(a.out) if a.out else REPO / "bench-results" / f"profile-{stamp}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    root = Path(a.data_dir) / f"{a.size}-{a.count}"
    if a.size == "small":
        m = generate.generate(root, a.count, split=4)
    else:   # the same parameters as run.py's "large" phase, so the data is shared
        m = generate.generate(root, a.count, max(1, a.count // 50), 2, "large", 2)
    n = m.files
    spy = pyspy()
    work = Path(tempfile.mkdtemp(prefix="pacs-profile-"))
    lines = [f"# pacs_server C-STORE profile, {stamp}", "",
             f"{n} {a.size} instances ({m.bytes / 1e6:.1f} MB) over one storescu association, "
             "fresh server each run.", ""]
    try:
        lines += ["| configuration | wall ms/instance | server CPU ms/instance | instances/s |",
                  "| --- | --- | --- | --- |"]
        for label, fsync, sync in (("durable: fsync on, synchronous full", True, "full"),
                                   ("fsync off, synchronous normal", False, "normal")):
            for r in range(a.runs):
                wall, cpu = timed_run(work, root, n, fsync, sync, f"t-{fsync}-{r}")
                print(f"{label}, run {r + 1}: {wall:.2f} s, CPU {cpu:.2f} s", file=sys.stderr)
                lines.append(f"| {label} (run {r + 1}) | {1000 * wall / n:.2f} | "
                             f"{1000 * cpu / n:.2f} | {n / wall:.0f} |")
        raw = {}
        for kind, extra in (("wall", ["--idle"]), ("cpu", [])):
            raw[kind] = out.with_name(out.stem + f"-{kind}.txt")
            cmd = [spy, "record", "--threads", *extra, "--nonblocking", "-r", str(a.rate),
                   "--format", "raw", "-o", str(raw[kind])]
            wall, cpu = timed_run(work, root, n, True, "full", f"p-{kind}", profile=cmd)
            print(f"profiled ({kind}): {wall:.2f} s, CPU {cpu:.2f} s", file=sys.stderr)
            lines.append(f"| durable, under py-spy ({kind}) | {1000 * wall / n:.2f} | "
                         f"{1000 * cpu / n:.2f} | {n / wall:.0f} |")
        lines += analysis(raw["wall"], raw["cpu"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = "\n".join(lines) + "\n"
    out.write_text(text)
    print(text)
    print(f"written: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
