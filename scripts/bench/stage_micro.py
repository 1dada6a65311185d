#!/usr/bin/env python3
"""In-process CPU of the archive's stage and store for one small instance, two trees.

    .venv/bin/python scripts/bench/stage_micro.py --a /tmp/base/src [--b src]
        [--count 500] [--rounds 5] [--no-fsync]

Each round runs tree A and tree B in a child process (PYTHONPATH), alternating the
order. The child writes `count` received files into its FileStore's receive directory
the way dicom/receive.py does (the archive's File Meta, then the data set of a CT_small
copy with fresh UIDs, 25 instances per series), then calls `ArchiveService.stage(...,
adopt=True)` and `ArchiveService.store()` on each with an index that commits nothing
(the index write is the loop's, measured elsewhere). Thread CPU per instance
(`time.thread_time`: fsync waits cost nothing, their system time does) of the stage
and of the store, and their wall-clock time (fsync waits included: what one
association waits for), medians per tree with the load average. Benchmark evidence
only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHILD_ENV = "PACS_STAGE_MICRO_CHILD"


def child(count: int, fsync: bool) -> dict[str, float]:
    import time

    from pydicom import config as pydicom_config
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset
    from pydicom.uid import ExplicitVRLittleEndian

    from pacs_server.config import StorageConfig
    from pacs_server.services.archive import ArchiveService
    from pacs_server.services.ingest import file_meta_bytes
    from pacs_server.storage.filestore import FileStore

    class _NoIndex:
        async def lookup(self, record: object) -> None:
            return None

        async def add(self, record: object, replace: bool) -> None:
            return None

    def run(coro: object) -> object:
        try:
            coro.send(None)  # type: ignore[attr-defined]
        except StopIteration as stop:
            return stop.value
        raise RuntimeError("the index coroutine awaited")

    # As the server runs (dicom/runtime.py): no read-time value validation.
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    ds = dcmread(get_testdata_file("CT_small.dcm", download=False))
    with tempfile.TemporaryDirectory(prefix="stage-micro-", dir="/var/tmp") as root:
        files = FileStore(root, fsync=fsync, identity="micro")
        files.prepare()
        archive = ArchiveService(StorageConfig(directory=root), files, _NoIndex())
        received = []
        for i in range(count):
            series = i // 25
            ds.StudyInstanceUID = f"2.25.1000{series // 2}"
            ds.SeriesInstanceUID = f"2.25.2000{series}"
            ds.SOPInstanceUID = f"2.25.3000{i}"
            buf = DicomBytesIO()
            buf.is_little_endian, buf.is_implicit_VR = True, False
            write_dataset(buf, ds)
            meta = file_meta_bytes(ds.SOPClassUID, ds.SOPInstanceUID,
                                   ExplicitVRLittleEndian, "MICRO")
            path = files.incoming / f"{i:06d}.dcm"
            path.write_bytes(meta + buf.getvalue())
            received.append(path)
        cpu, wall = time.thread_time, time.perf_counter
        got = dict.fromkeys(("stage", "store", "stage wall", "store wall"), 0.0)
        for path in received:
            c0, w0 = cpu(), wall()
            staged = archive.stage(path, ExplicitVRLittleEndian, "", "MICRO", adopt=True)
            c1, w1 = cpu(), wall()
            archive.store(staged, run)
            c2, w2 = cpu(), wall()
            got["stage"] += c1 - c0
            got["store"] += c2 - c1
            got["stage wall"] += w1 - w0
            got["store wall"] += w2 - w1
    return {**{k: v * 1e6 / count for k, v in got.items()}, "load": os.getloadavg()[0]}


def one(src: str, count: int, fsync: bool) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": src, CHILD_ENV: json.dumps([count, fsync])}
    out = subprocess.run([sys.executable, __file__], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def main() -> int:
    if CHILD_ENV in os.environ:
        count, fsync = json.loads(os.environ[CHILD_ENV])
        print(json.dumps(child(count, fsync)))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", required=True, help="src directory of version A")
    p.add_argument("--b", default=str(REPO / "src"), help="src directory of version B")
    p.add_argument("--count", type=int, default=500)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--no-fsync", action="store_true")
    a = p.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
    for r in range(a.rounds):
        for name in ("AB" if r % 2 == 0 else "BA"):
            got = one(a.a if name == "A" else a.b, a.count, not a.no_fsync)
            runs[name].append(got)
            print(f"round {r} {name}: stage {got['stage']:.0f} µs, store {got['store']:.0f} µs, "
                  f"load {got['load']:.1f}", file=sys.stderr)
    print(f"\n{a.count} CT_small per round, {a.rounds} rounds, fsync "
          f"{'off' if a.no_fsync else 'on'}; µs per instance (median): thread CPU, "
          "and wall-clock\n")
    print("| step | A | B | B/A |")
    print("| --- | --- | --- | --- |")
    for step in ("stage", "store", "stage wall", "store wall"):
        va = statistics.median(x[step] for x in runs["A"])
        vb = statistics.median(x[step] for x in runs["B"])
        print(f"| {step} | {va:.0f} | {vb:.0f} | {vb / va:.2f} |")
    loads = [x["load"] for x in runs["A"] + runs["B"]]
    print(f"\nload {min(loads):.1f}–{max(loads):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
