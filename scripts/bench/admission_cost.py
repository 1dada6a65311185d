#!/usr/bin/env python3
"""What server-wide admission costs a worker: the policy calls of one association
(admit_connection, connection_done, decide, release) on the local AssociationPolicy and
through RemotePolicy → the supervisor's AdmissionDesk (workers/admission.py).

    .venv/bin/python scripts/bench/admission_cost.py [--n 5000] [--threads 1,4]

The desk runs on an asyncio loop in another process, as in the supervisor; the
client calls from 1 or more threads at once (a worker's accept loop and its
association threads share one channel).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from pacs_server.config import load_config
from pacs_server.dicom.policy import AssociationPolicy
from pacs_server.metrics import Metrics
from pacs_server.workers.admission import AdmissionDesk, RemotePolicy
from pacs_server.workers.channel import Channel, serve


def new_policy() -> AssociationPolicy:
    # Rate limits off: the same calling AE thousands of times a second is the point here.
    cfg = load_config(None, {"server.max_associations": 10_000,
                             "limits.associations_per_minute_per_ae": 0,
                             "limits.associations_per_minute_per_address": 0})
    return AssociationPolicy(cfg.access_control, cfg.limits, cfg.server.max_associations,
                             Metrics())


def association(policy: object, i: int) -> None:
    address = f"10.0.{i % 200}.{i % 250}"
    assert policy.admit_connection(address)            # type: ignore[attr-defined]
    assert policy.decide("MODALITY", address, False) is None   # type: ignore[attr-defined]
    policy.connection_done(address)                    # type: ignore[attr-defined]
    policy.release("MODALITY", address)                # type: ignore[attr-defined]


def desk_process(path: str, ready: multiprocessing.synchronize.Event) -> None:
    async def main() -> None:
        await serve(Path(path), AdmissionDesk(new_policy(), lambda *_: None).handle)
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


def timed(policy: object, n: int, threads: int) -> list[float]:
    """Microseconds per association, per thread."""
    out: list[float] = []

    def run(offset: int) -> None:
        started = time.perf_counter()
        for i in range(n):
            association(policy, offset + i)
        out.append((time.perf_counter() - started) / n * 1e6)

    workers = [threading.Thread(target=run, args=(t * n,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--threads", default="1,4")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "admission.sock")
        ready = multiprocessing.Event()
        desk = multiprocessing.Process(target=desk_process, args=(path, ready), daemon=True)
        desk.start()
        ready.wait(30)
        remote = RemotePolicy(Channel(Path(path)))
        print("| policy | threads | µs per association (4 calls), median per thread |")
        print("| --- | --- | --- |")
        for threads in (int(t) for t in a.threads.split(",")):
            for name, policy in (("local", new_policy()), ("remote", remote)):
                timed(policy, min(a.n, 500), threads)       # warm-up
                per = timed(policy, a.n, threads)
                print(f"| {name} | {threads} | {statistics.median(per):.1f} |", flush=True)
        desk.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
