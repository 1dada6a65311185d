"""`server.transport`: the event-driven reactors (dicom/reactor.py) and pynetdicom's own.

Idle associations cost no CPU on the event-driven transport, the switch selects the
classes, and both serve the same DIMSE traffic (the interop subset, tests/e2e, also
runs on both: .ci/run, PACS_TRANSPORT=stock).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

from pacs_server.config import Config
from pacs_server.dicom.reactor import EventDUL, EventReactors
from support.config import peer
from support.instances import CT_IMAGE, DicomFiles
from support.scp import StorageScp
from support.scu import SUCCESS, GetScu, Scu, StoreResult, contexts_for, identifier, send
from support.security import associated, echo_rq_pdata, read_pdu
from support.server import RunningServer

TICKS = os.sysconf("SC_CLK_TCK")


def thread_cpu_s(native_id: int) -> float:
    """utime + stime of one thread of this process, in seconds."""
    with open(f"/proc/self/task/{native_id}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def server_associations() -> list[Association]:
    return [t for t in threading.enumerate() if isinstance(t, Association)
            and t.is_acceptor and t.is_alive()]


async def established(count: int) -> list[Association]:
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        found = [a for a in server_associations() if a.is_established]
        if len(found) >= count:
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"{count} established associations expected")


async def test_idle_associations_use_no_cpu(
        start_server: Callable[..., Awaitable[RunningServer]],
        make_cfg: Callable[..., Config]) -> None:
    srv = await start_server(make_cfg({"server.transport": "events"}))
    assert srv.port
    socks = [associated(srv.port) for _ in range(5)]
    try:
        assocs = await established(5)
        assert all(isinstance(a, EventReactors) and isinstance(a.dul, EventDUL)
                   for a in assocs)
        # One thread per association: the DUL's starts at the first request other
        # than C-ECHO (dicom/acceptor.py).
        assert all(a.native_id for a in assocs)
        assert not any(a.dul.native_id for a in assocs)
        ids = [a.native_id for a in assocs]
        await asyncio.sleep(0.3)
        before = sum(thread_cpu_s(i) for i in ids if i is not None)
        await asyncio.sleep(2.0)
        used = sum(thread_cpu_s(i) for i in ids if i is not None) - before
        # pynetdicom's own reactors: ~18 ms per second per association (two threads
        # waking every millisecond), i.e. ~0.18 s here; ours wake when data arrives.
        assert used <= 0.03, f"5 idle reactor threads used {used:.3f} s of CPU in 2 s"
        # ...and answer at once when something does arrive.
        socks[0].sendall(echo_rq_pdata())
        reply = read_pdu(socks[0])
        assert reply[:1] == b"\x04"
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.parametrize("transport", ["events", "stock"])
async def test_transport_switch_selects_the_reactors(
        transport: str, start_server: Callable[..., Awaitable[RunningServer]],
        make_cfg: Callable[..., Config], dicom_files: DicomFiles) -> None:
    dest = StorageScp("REACTDEST")
    try:
        srv = await start_server(make_cfg({"server.transport": transport,
                                           "peers": [peer("REACTDEST", dest.port)]}))
        assert srv.port
        sock = associated(srv.port)
        try:
            (assoc,) = await established(1)
            assert isinstance(assoc, EventReactors) is (transport == "events")
            assert isinstance(assoc.dul, EventDUL) is (transport == "events")
        finally:
            sock.close()
        await asyncio.to_thread(exchanges, srv.port, dicom_files, dest)
    finally:
        dest.stop()


def exchanges(port: int, dicom_files: DicomFiles, dest: StorageScp) -> None:
    """Several DIMSE exchanges per association, each direction of the pause protocol:
    C-STORE requests served, C-GET sub-operations sent on the acceptor association,
    C-MOVE sub-operations sent on a requestor association of ours."""
    study = generate_uid()
    files = [dicom_files.generated(StudyInstanceUID=study, InstanceNumber=i)
             for i in range(3)]
    assert [r.status for r in Scu().store(port, files)] == [SUCCESS] * 3
    query = identifier("STUDY", StudyInstanceUID=study)
    getter = GetScu(CT_IMAGE)
    assert getter.get(port, query)[-1].status == SUCCESS
    assert len(getter.received) == 3
    assert Scu().move(port, query, "REACTDEST")[-1].status == SUCCESS
    assert len(dest.received) == 3


def echo_then_store(port: int, path: Path) -> tuple[list[int], Association | None,
                                                    bool, bool, StoreResult]:
    """Two C-ECHOs then a C-STORE on one association: the statuses, the server's
    association, whether its DUL thread was started after the echoes and after the
    store (a C-FIND after stores: tests/integration/test_store_inline.py)."""
    with Scu().associate(port, contexts_for([path])) as assoc:
        echoes = [int(assoc.send_c_echo().Status) for _ in range(2)]
        (server,) = [a for a in server_associations() if a.is_established]
        after_echoes = server.dul.native_id is not None
        stored = send(assoc, path)
        after_store = server.dul.native_id is not None
    return echoes, server, after_echoes, after_store, stored


async def test_echoes_and_stores_are_served_without_the_dul_thread(
        start_server: Callable[..., Awaitable[RunningServer]],
        make_cfg: Callable[..., Config], dicom_files: DicomFiles) -> None:
    srv = await start_server(make_cfg({"server.transport": "events"}))
    assert srv.port
    path = dicom_files.generated()
    echoes, server, after_echoes, after_store, stored = await asyncio.to_thread(
        echo_then_store, srv.port, path)
    assert echoes == [SUCCESS, SUCCESS]
    assert not after_echoes             # the association thread ran the DUL itself
    assert not after_store and stored.ok    # so was the C-STORE
    assert server is not None
    await asyncio.to_thread(server.join, 5)
    assert not server.is_alive() and not server.dul.is_alive()


async def test_an_abort_from_another_thread_reaches_a_one_thread_association(
        start_server: Callable[..., Awaitable[RunningServer]],
        make_cfg: Callable[..., Config]) -> None:
    srv = await start_server(make_cfg({"server.transport": "events"}))
    assert srv.port
    # The association thread used to shut the socket down while the DUL's thread,
    # just handed the reactor, was still sending the A-ABORT: about 1 abort in 150
    # reached the peer as a bare close. Forty rounds, each read while the abort runs.
    for _ in range(40):
        sock = associated(srv.port)
        try:
            (assoc,) = await established(1)
            assert assoc.dul.native_id is None
            # What `pacsctl associations disconnect` and the drain at shutdown do.
            aborting = asyncio.ensure_future(asyncio.to_thread(assoc.abort))
            reply = await asyncio.to_thread(read_pdu, sock)
            sock.close()
            await aborting
            assert reply[:1] == b"\x07", reply[:10].hex()     # A-ABORT (PS3.8 9.3.8)
            await asyncio.to_thread(assoc.join, 5)
            assert not assoc.is_alive()
        finally:
            sock.close()


def acceptor_threads_started(action: Callable[[], object]) -> list[threading.Thread]:
    """The server-side threads (request handler, acceptor association, its DUL)
    started while `action` runs in this process."""
    started: list[threading.Thread] = []
    original = threading.Thread.start

    def recording(thread: threading.Thread) -> None:
        started.append(thread)
        original(thread)

    threading.Thread.start = recording  # type: ignore[method-assign]
    try:
        action()
    finally:
        threading.Thread.start = original  # type: ignore[method-assign]

    def acceptor_side(t: threading.Thread) -> bool:
        owner = t.assoc if isinstance(t, DULServiceProvider) else t
        return "process_request_thread" in t.name or (
            isinstance(owner, Association) and owner.mode == "acceptor")
    return [t for t in started if acceptor_side(t)]


async def test_an_echo_association_is_served_by_the_one_thread_the_accept_loop_starts(
        start_server: Callable[..., Awaitable[RunningServer]],
        make_cfg: Callable[..., Config]) -> None:
    # dicom/connection.py: no request-handler thread starting the association's.
    srv = await start_server(make_cfg({"server.transport": "events"}))
    port = srv.port
    statuses: list[int] = []
    threads = await asyncio.to_thread(
        acceptor_threads_started, lambda: statuses.append(Scu().echo(port)))
    assert statuses == [SUCCESS]
    assert len(threads) == 1 and isinstance(threads[0], Association), threads
    await asyncio.to_thread(threads[0].join, 5)
    assert not threads[0].is_alive()
    assert srv.sample("pacs_associations_total", outcome="released") == 2  # with the probe


@pytest.mark.parametrize("transport", ["events", "stock"])
async def test_an_idle_association_is_aborted_after_the_idle_timeout(
        transport: str, start_server: Callable[..., Awaitable[RunningServer]],
        make_cfg: Callable[..., Config]) -> None:
    srv = await start_server(make_cfg({"server.transport": transport,
                                       "server.idle_timeout": 1.0}))
    assert srv.port
    sock = associated(srv.port)
    try:
        sock.sendall(echo_rq_pdata())
        assert read_pdu(sock)[:1] == b"\x04"      # C-ECHO-RSP, then silence
        started = time.monotonic()
        reply = read_pdu(sock, timeout=10)
        waited = time.monotonic() - started
        assert reply[:1] == b"\x07", reply[:10].hex()     # A-ABORT (PS3.8 9.3.8)
        assert 0.8 <= waited < 5, waited
    finally:
        sock.close()
