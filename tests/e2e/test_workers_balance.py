"""`server.workers: 2`: new associations go to the least busy worker, and the workers
forward association events only while the live feed is watched.

Real processes (`python -m pacs_server`), pynetdicom peers, the HTTP side; the split is
read from /status (which asks every worker), the forwarding state from each worker's
command socket.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from pacs_server.workers.channel import ask
from support.http import metric
from support.polling import wait_until
from support.security import connect_from
from support.workers import TOKEN, Held, get, start, write_config


def per_worker(server: Any) -> dict[int, int]:
    """Live associations per worker, from /status."""
    return dict(collections.Counter(a["worker"] for a in get(server, "/status")["associations"]))


def split_is(server: Any, expected: dict[int, int]) -> None:
    """Once every association is listed, each worker holds `expected[worker]`."""
    total = sum(expected.values())
    wait_until(lambda: sum(per_worker(server).values()) == total, 15, f"{total} associations")
    assert per_worker(server) == expected


def open_in_turn(held: Held, port: int, prefix: str, count: int) -> None:
    for i in range(count):
        assert held.open(port, f"{prefix}{i}").is_established


def wait_for_restart(server: Any, worker: int, victim: int) -> None:
    wait_until(lambda: any(e["event"] == "worker.started" and e["worker"] == worker
                           and e["pid"] != victim for e in server.events()),
               60, f"worker {worker} restarted")


def open_at_once(held: Held, port: int, prefix: str, count: int) -> None:
    """`count` associations requested at the same moment (threads behind a barrier)."""
    barrier = threading.Barrier(count)

    def one(i: int) -> None:
        barrier.wait()
        held.open(port, f"{prefix}{i}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(held.assocs) >= count and all(a.is_established for a in held.assocs)


def test_concurrent_associations_split_evenly_over_the_workers(
        run_pacs: Callable[..., Any], tmp_path: Path) -> None:
    server = start(run_pacs, write_config(tmp_path))
    held = Held()
    try:
        open_at_once(held, server.port, "BURST", 8)
        split_is(server, {1: 4, 2: 4})
        # One after the other, while the first 8 are held: still even.
        open_in_turn(held, server.port, "NEXT", 4)
        split_is(server, {1: 6, 2: 6})
    finally:
        held.release()
    assert server.stop() == 0, server.stderr


def test_while_a_worker_restarts_its_sibling_takes_every_connection(
        run_pacs: Callable[..., Any], tmp_path: Path) -> None:
    server = start(run_pacs, write_config(tmp_path))
    held = Held()
    try:
        victim = server.pids[1]
        os.kill(victim, signal.SIGKILL)
        server.wait_for_event("worker.died", worker=1)
        # None refused, none waiting on the dead worker: worker 2 takes them all.
        open_in_turn(held, server.port, "ALONE", 4)
        split_is(server, {2: 4})
        wait_for_restart(server, 1, victim)
        # The restarted worker accepts again, and takes the next ones until even.
        open_in_turn(held, server.port, "BACK", 4)
        split_is(server, {1: 4, 2: 4})
    finally:
        held.release()
    assert server.stop() == 0, server.stderr


def forwarding(server: Any) -> dict[int, bool]:
    """Whether each worker forwards its association events (its command socket)."""
    (rundir,) = Path(tempfile.gettempdir()).glob(f"pacs-server-{server.proc.pid}-*")

    async def both() -> dict[int, bool]:
        return {i: bool((await ask(rundir / f"worker-{i}.sock", {"op": "status"}))["watched"])
                for i in (1, 2)}

    return asyncio.run(both())


def test_the_workers_forward_events_only_while_the_feed_is_watched(
        run_pacs: Callable[..., Any], tmp_path: Path) -> None:
    server = start(run_pacs, write_config(tmp_path))
    assert forwarding(server) == {1: False, 2: False}

    async def watch_then_leave() -> dict[int, bool]:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession() as session:
            async with session.get(server.http + "/api/events", headers=headers) as rsp:
                assert rsp.status == 200
                await rsp.content.readline()                  # ": connected"
                await asyncio.to_thread(wait_until, lambda: forwarding(server) ==
                                        {1: True, 2: True}, 15, "forwarding on")
                return await asyncio.to_thread(forwarding, server)

    assert asyncio.run(watch_then_leave()) == {1: True, 2: True}
    wait_until(lambda: forwarding(server) == {1: False, 2: False}, 15, "forwarding off")
    # A worker started while nobody watches starts without forwarding.
    victim = server.pids[2]
    os.kill(victim, signal.SIGKILL)
    wait_for_restart(server, 2, victim)
    wait_until(lambda: forwarding(server) == {1: False, 2: False}, 15, "restarted, off")
    assert server.stop() == 0, server.stderr


def test_silent_connections_are_capped_server_wide_by_both_workers(
        run_pacs: Callable[..., Any], tmp_path: Path) -> None:
    # Admission runs in each connection's thread (dicom/accept.py), asked of the
    # supervisor: the cap holds across both workers, the rest are closed at once.
    config = write_config(tmp_path, extra="limits:\n  unassociated_per_address: 3")
    server = start(run_pacs, config)
    flood = [connect_from("127.0.0.2", server.port) for _ in range(12)]
    try:
        def refused() -> float:
            return metric(get(server, "/metrics"), "pacs_connections_refused_total",
                          reason="unassociated_per_address")

        wait_until(lambda: refused() == 9, 15, "9 of 12 refused")
        closed = 0
        for sock in flood:
            sock.settimeout(0.2)
            try:
                closed += sock.recv(1) == b""
            except TimeoutError:
                pass              # held: nothing sent, not closed
            except OSError:
                closed += 1
        assert closed == 9
        held = Held()            # another address is not affected
        try:
            assert held.open(server.port, "LEGIT").is_established
        finally:
            held.release()
    finally:
        for sock in flood:
            sock.close()
    assert server.stop() == 0, server.stderr


def test_the_live_feed_starts_once_every_worker_forwards(run_pacs: Callable[..., Any],
                                                         tmp_path: Path) -> None:
    server = start(run_pacs, write_config(tmp_path))
    slow = server.pids[2]

    async def watch() -> tuple[bool, bytes, dict[int, bool]]:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        connected = asyncio.Event()
        async with aiohttp.ClientSession() as session:
            async def first_line() -> tuple[bytes, dict[int, bool]]:
                async with session.get(server.http + "/api/events", headers=headers) as rsp:
                    assert rsp.status == 200
                    line = await rsp.content.readline()
                    connected.set()
                    return line, await asyncio.to_thread(forwarding, server)

            task = asyncio.ensure_future(first_line())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(connected.wait(), 0.5)
            early = connected.is_set()      # worker 2 cannot have acknowledged yet
            os.kill(slow, signal.SIGCONT)
            line, state = await asyncio.wait_for(task, 15)
            return early, line, state

    os.kill(slow, signal.SIGSTOP)
    try:
        early, line, state = asyncio.run(watch())
    finally:
        os.kill(slow, signal.SIGCONT)
    assert not early, "the stream began before worker 2 forwarded its events"
    assert line == b": connected\n"
    assert state == {1: True, 2: True}      # right after it: nothing to wait for
    assert server.stop() == 0, server.stderr
