#!/usr/bin/env python3
"""CPU time of each server thread per stored instance (C-STORE of the small set).

    .venv/bin/python scripts/bench/thread_cpu.py [--associations 1|4] [--workers 1|2]
        [--src DIR] [--count 1000] [--series-per-study 50]

py-spy's CPU mode counts a thread blocked in fsync as busy, so its shares are not CPU
time. Here every thread's utime + stime is read from /proc/<pid>/task/<tid>/stat
(polled, so threads that end during the run keep their last value) and each thread is
named from one `py-spy dump` taken while the instances arrive. Needs py-spy.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import clients  # noqa: E402
import generate  # noqa: E402
from profile_store import ROLES, pyspy  # noqa: E402
from servers import PacsServer  # noqa: E402
from workers_scaling import TICK, processes  # noqa: E402


class TaskPoller(threading.Thread):
    """The last CPU ticks seen for every thread of every server process."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.ticks: dict[tuple[int, int], int] = {}
        self.stop = threading.Event()

    def sample(self) -> None:
        for proc in processes(self.pid):
            try:
                tasks = list(Path(f"/proc/{proc}/task").iterdir())
            except OSError:
                continue
            for task in tasks:
                try:
                    fields = (task / "stat").read_text().rpartition(")")[2].split()
                    self.ticks[(proc, int(task.name))] = int(fields[11]) + int(fields[12])
                except (OSError, ValueError, IndexError):
                    pass

    def run(self) -> None:
        while not self.stop.wait(0.05):
            self.sample()


def names(pid: int, spy: str) -> dict[tuple[int, int], str]:
    """(process, tid) -> role, from py-spy dump of each server process."""
    out: dict[tuple[int, int], str] = {}
    for proc in processes(pid):
        text = subprocess.run([spy, "dump", "--pid", str(proc)], capture_output=True,
                              text=True, timeout=60).stdout
        for block in re.split(r"\n(?=Thread )", text):
            m = re.match(r"Thread (\d+) \(\w+\): \"([^\"]*)\"", block)
            if m:
                out[(proc, int(m.group(1)))] = role(block, proc == pid)
    return out


def role(block: str, main: bool) -> str:
    for key, name in ROLES:
        if key in block:
            return name if main else f"{name} [worker]"
    return "other threads" if main else "other threads [worker]"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--associations", type=int, choices=(1, 4), default=1)
    p.add_argument("--workers", default="1")
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--src", help="src directory to run (PYTHONPATH); default this tree")
    p.add_argument("--series-per-study", type=int, default=2,
                   help="50 gives one instance per series (every instance a new series)")
    p.add_argument("--data-dir", default="/tmp/pacs-bench-data")
    a = p.parse_args()
    root = generate.small_set(Path(a.data_dir), a.count, a.series_per_study)
    m = generate.generate(root, a.count, series_per_study=a.series_per_study, split=4)
    dirs = [root] if a.associations == 1 else sorted(root.glob("part*"))
    spy = pyspy()
    with tempfile.TemporaryDirectory(prefix="pacs-threads-") as work:
        srv = PacsServer(Path(work) / "s", workers=a.workers)
        if a.src:
            srv.env = {"PYTHONPATH": a.src}
        srv.start()
        try:
            poller = TaskPoller(srv.pid)
            poller.sample()
            start = dict(poller.ticks)
            poller.start()
            seen: dict[tuple[int, int], str] = {}

            def dump_later() -> None:
                time.sleep(3.0)
                seen.update(names(srv.pid, spy))

            dumper = threading.Thread(target=dump_later, daemon=True)
            dumper.start()
            if len(dirs) == 1:
                t = clients.store(srv.port, srv.ae, dirs)
            else:
                t = clients.store_parallel(srv.port, srv.ae, dirs)
            time.sleep(0.3)
            poller.stop.set()
            poller.join()
            poller.sample()
            dumper.join()
            n = srv.count()
            load = os.getloadavg()[0]
        finally:
            srv.stop()
    if t.returncode or n < m.files:
        raise SystemExit(f"{n}/{m.files} stored: {t.error()}")
    by_role: collections.Counter[str] = collections.Counter()
    for key, ticks in poller.ticks.items():
        by_role[seen.get(key, "threads gone before the dump")] += ticks - start.get(key, 0)
    total = sum(by_role.values())
    print(f"{n} instances, {a.associations} association(s), workers {a.workers}, "
          f"{n / t.seconds:.0f}/s, load {load:.1f}; CPU {total / TICK * 1000 / n:.2f} "
          f"ms/instance\n")
    print("| thread | CPU ms/instance | share |")
    print("| --- | --- | --- |")
    for name, ticks in by_role.most_common():
        print(f"| {name} | {ticks / TICK * 1000 / n:.2f} | {100 * ticks / total:.0f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
