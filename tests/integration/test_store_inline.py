"""C-STORE and C-FIND served by the association thread alone (dicom/acceptor.py, events
transport): real storescu, findscu and pynetdicom peers, the DUL's own thread never
started for a store-only or find-only association, and what a peer or an operator can
do to it meanwhile: abort mid-transfer, abort or vanish while our handler waits on the
event loop, C-CANCEL and A-ABORT between C-FIND responses, a C-FIND and then a C-MOVE
after the stores (hand-over), a disconnect from the admin API, a large instance."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid
from pynetdicom.association import Association
from structlog.testing import capture_logs

from pacs_server.config import Config
from support.archive import archived_by_uid, incoming_files, index_counts, wait_for_rows
from support.dcmtk import Dcmtk
from support.http import TOKEN, base_url, http_call, http_get
from support.instances import DicomFiles, dataset_bytes, sop_uid
from support.polling import wait_until
from support.scu import (
    CANCEL,
    FIND_S,
    MOVE_S,
    NATIVE,
    PENDING,
    SUCCESS,
    Scu,
    contexts_for,
    identifier,
    send,
    throttle,
)
from support.server import RunningServer
from support.worklist import CONTEXTS as MWL_CONTEXTS
from support.worklist import MWL, add_items, cancel_after, item, worklist_repository
from support.worklist import query as mwl_query

EVENTS = {"server.transport": "events"}
# A-ABORT, source service user, reason not significant (PS3.8 9.3.8).
A_ABORT = b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00"
# What the server logs when its reactor or state machine meets something unexpected.
FAILURES = {"association.reactor_failed", "pdu.malformed"}


def server_associations() -> list[Association]:
    return [t for t in threading.enumerate() if isinstance(t, Association)
            and t.is_acceptor and t.is_alive()]


def the_server_association() -> Association:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = [a for a in server_associations() if a.is_established]
        if found:
            assert len(found) == 1
            return found[0]
        time.sleep(0.01)
    raise AssertionError("no established server association")


def gone(assoc: Association) -> None:
    assoc.join(10)
    assert not assoc.is_alive() and not assoc.dul.is_alive()


def block_loop(srv: RunningServer, seconds: float) -> None:
    """Keep the server's event loop busy for `seconds` (what a slow index write does):
    a C-STORE handler then waits on it."""
    srv._loop.call_soon_threadsafe(time.sleep, seconds)


def no_failures(logs: list[dict[str, Any]]) -> None:
    assert not [e for e in logs if e.get("event") in FAILURES], logs


class Watch:
    """The server associations seen while a client runs (polled every 2 ms)."""

    def __init__(self) -> None:
        self.seen: set[Association] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.seen.update(server_associations())
            time.sleep(0.002)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


async def test_a_storescu_association_is_served_by_one_thread(
        start_server: Callable[..., Awaitable[RunningServer]],
        make_cfg: Callable[..., Config], dicom_files: DicomFiles, dcmtk: Dcmtk,
        tmp_path: Path) -> None:
    srv = await start_server(make_cfg(EVENTS))
    assert srv.port
    folder = tmp_path / "send"
    paths = [dicom_files.generated(directory=folder, InstanceNumber=i) for i in range(6)]

    def run() -> tuple[int, str, set[Association]]:
        with Watch() as watch:
            proc = subprocess.run(
                [dcmtk.tool("storescu"), "-aet", "MODALITY", "-aec", "PACS", "+sd",
                 "127.0.0.1", str(srv.port), str(folder)],
                env=dcmtk.env, capture_output=True, text=True, timeout=120)
        return proc.returncode, proc.stdout + proc.stderr, watch.seen

    code, output, seen = await asyncio.to_thread(run)
    assert code == 0, output
    await asyncio.to_thread(wait_for_rows, srv.db, len(paths))
    stored = archived_by_uid(srv.archive)
    for path in paths:
        assert dataset_bytes(stored[sop_uid(path)]) == dataset_bytes(path)
    assert seen, "the association was not seen"
    for assoc in seen:
        await asyncio.to_thread(gone, assoc)
        assert assoc.dul.ident is None, "the DUL's thread was started for C-STOREs"
        assert assoc.is_released
    assert incoming_files(srv.archive) == []


async def test_a_c_find_after_c_stores_stays_inline_and_a_c_move_hands_over(
        start_server: Callable[..., Awaitable[RunningServer]],
        make_cfg: Callable[..., Config], dicom_files: DicomFiles) -> None:
    srv = await start_server(make_cfg(EVENTS))
    study = generate_uid()
    paths = [dicom_files.generated(StudyInstanceUID=study, InstanceNumber=i) for i in range(3)]

    def run() -> tuple[Association, list[bool], list[int], bool, list[int], bool]:
        contexts = [*contexts_for(paths), (FIND_S, NATIVE), (MOVE_S, NATIVE)]
        with Scu().associate(srv.port, contexts) as assoc:
            server = the_server_association()
            started = []
            for path in paths:
                assert send(assoc, path).ok
                started.append(server.dul.ident is not None)
            query = identifier("IMAGE", StudyInstanceUID=study, SOPInstanceUID="")
            statuses = [int(st.Status) for st, _ident in assoc.send_c_find(query, FIND_S)]
            after_find = server.dul.ident is not None
            moved = [int(st.Status) for st, _ident in assoc.send_c_move(
                identifier("STUDY", StudyInstanceUID=study), "NOWHERE", MOVE_S)]
            after_move = server.dul.ident is not None
            assert int(assoc.send_c_echo().Status) == SUCCESS
        return server, started, statuses, after_find, moved, after_move

    server, started, statuses, after_find, moved, after_move = await asyncio.to_thread(run)
    assert started == [False, False, False]
    assert statuses == [PENDING] * 3 + [SUCCESS]
    assert not after_find, "the DUL's thread was started for a C-FIND"
    assert moved and moved[-1] not in (SUCCESS, PENDING)    # an unknown destination
    assert after_move
    await asyncio.to_thread(gone, server)
    assert server.is_released


async def test_a_findscu_association_is_served_by_one_thread(
        start_server: Callable[..., Awaitable[RunningServer]],
        make_cfg: Callable[..., Config], dicom_files: DicomFiles, dcmtk: Dcmtk,
        tmp_path: Path) -> None:
    srv = await start_server(make_cfg(EVENTS))
    study = generate_uid()
    paths = [dicom_files.generated(StudyInstanceUID=study, InstanceNumber=i) for i in range(4)]
    assert all(r.ok for r in await asyncio.to_thread(Scu().store, srv.port, paths))

    def run() -> tuple[int, str, set[Association], int]:
        with Watch() as watch:
            proc = subprocess.run(
                [dcmtk.tool("findscu"), "-aet", "FINDER", "-aec", "PACS", "-S", "-X",
                 "-od", str(tmp_path), "-k", "QueryRetrieveLevel=IMAGE",
                 "-k", f"StudyInstanceUID={study}", "-k", "SOPInstanceUID",
                 "127.0.0.1", str(srv.port)],
                env=dcmtk.env, capture_output=True, text=True, timeout=120)
        answers = len(list(tmp_path.glob("rsp*.dcm")))
        return proc.returncode, proc.stdout + proc.stderr, watch.seen, answers

    code, output, seen, answers = await asyncio.to_thread(run)
    assert code == 0, output
    assert answers == len(paths)
    assert seen, "the association was not seen"
    for assoc in seen:
        await asyncio.to_thread(gone, assoc)
        assert assoc.dul.ident is None, "the DUL's thread was started for a C-FIND"
        assert assoc.is_released


async def worklist_of(srv: RunningServer, count: int) -> None:
    async with worklist_repository(srv.db) as repo:
        await add_items(repo, [item(n) for n in range(count)])


async def test_a_c_cancel_between_responses_without_the_dul_thread(
        start_server: Callable[..., Awaitable[RunningServer]],
        make_cfg: Callable[..., Config]) -> None:
    """The C-CANCEL-RQ is read between pending responses by the association thread
    (PS3.7 9.3.2.3): 0xFE00 well before the end, and the association goes on."""
    srv = await start_server(make_cfg(EVENTS))
    await worklist_of(srv, 400)

    def run() -> tuple[Association, int, list[int], list[int]]:
        with Scu().associate(srv.port, MWL_CONTEXTS) as assoc:
            server = the_server_association()
            pending, finals, after = cancel_after(assoc, 5)
        return server, pending, finals, after

    with capture_logs() as logs:
        server, pending, finals, after = await asyncio.to_thread(run)
        await asyncio.to_thread(gone, server)
    assert finals == [CANCEL]
    assert 5 <= pending < 400
    assert after == [PENDING, SUCCESS]
    assert server.dul.ident is None, "the DUL's thread was started"
    assert server.is_released
    no_failures(logs)


@pytest.mark.parametrize("how", ["A-ABORT", "connection closed"])
async def test_the_peer_leaving_between_c_find_responses(
        how: str, start_server: Callable[..., Awaitable[RunningServer]],
        make_cfg: Callable[..., Config]) -> None:
    """Read between responses as a C-CANCEL is: the responses stop, the association
    ends without an error, the server answers the next association."""
    srv = await start_server(make_cfg(EVENTS))
    await worklist_of(srv, 400)

    def run() -> tuple[Association, int]:
        with Scu().associate(srv.port, MWL_CONTEXTS) as assoc:
            server = the_server_association()
            pending = 0
            try:
                for status, _ in assoc.send_c_find(mwl_query(), MWL, msg_id=3):
                    if status.Status == PENDING:
                        pending += 1
                        if pending == 5:
                            raw = assoc.dul.socket.socket
                            if how == "A-ABORT":
                                raw.sendall(A_ABORT)
                            raw.shutdown(socket.SHUT_RDWR)
            except Exception:       # the client's side of the closed connection
                pass
            gone(server)
            return server, pending

    with capture_logs() as logs:
        server, pending = await asyncio.to_thread(run)
    assert pending >= 5
    assert server.dul.ident is None
    assert not server.is_established
    no_failures(logs)
    assert await Scu().aecho(srv.port) == SUCCESS


async def test_an_a_abort_mid_transfer_leaves_no_trace(
        start_server: Callable[..., Awaitable[RunningServer]],
        make_cfg: Callable[..., Config], dicom_files: DicomFiles) -> None:
    srv = await start_server(make_cfg(EVENTS))
    big = dicom_files.big(8 << 20)
    release = threading.Event()
    outcome: dict[str, Any] = {}

    def sender() -> None:
        try:
            with Scu("ABORTER").associate(srv.port, contexts_for([big])) as assoc:
                # Held at a PDU boundary once 2 MB are sent: the A-ABORT follows a whole PDU.
                throttle(assoc, 64 << 20, hold=(release, 2 << 20))
                outcome["assoc"] = assoc
                outcome["result"] = send(assoc, big)
        except Exception as exc:    # the connection the server closed may surface here
            outcome["error"] = exc

    with capture_logs() as logs:
        thread = threading.Thread(target=sender, daemon=True)
        thread.start()
        await asyncio.to_thread(wait_until, lambda: any(
            f.exists() and f.stat().st_size > 1 << 20 for f in incoming_files(srv.archive)),
            30, "a partly received file")
        server = the_server_association()
        assert server.dul.ident is None         # read by the association thread
        outcome["assoc"].dul.socket.socket.sendall(A_ABORT)
        await asyncio.to_thread(gone, server)
        release.set()
        await asyncio.to_thread(thread.join, 30)
    assert server.is_aborted
    result = outcome.get("result")
    assert result is None or result.status != SUCCESS
    await asyncio.to_thread(wait_until, lambda: incoming_files(srv.archive) == [], 10,
                            "the partial file removed")
    assert index_counts(srv.db)["instances"] == 0
    assert archived_by_uid(srv.archive) == {}
    no_failures(logs)
    assert await Scu().aecho(srv.port) == SUCCESS


@pytest.mark.parametrize("how", ["A-ABORT", "connection closed"])
async def test_the_peer_leaving_while_the_handler_waits_on_the_loop(
        how: str, start_server: Callable[..., Awaitable[RunningServer]],
        make_cfg: Callable[..., Config], dicom_files: DicomFiles) -> None:
    """The A-ABORT (or the closed connection) is read once the handler has returned; the
    instance is stored whole or not at all, the response meets a closed connection
    without an error, and the association ends."""
    srv = await start_server(make_cfg(EVENTS))
    path = dicom_files.generated()
    outcome: dict[str, Any] = {}

    def store(assoc: Association) -> None:
        try:
            outcome["result"] = send(assoc, path)
        except Exception as exc:
            outcome["error"] = exc

    def run() -> Association:
        with Scu().associate(srv.port, contexts_for([path]), require=True) as assoc:
            server = the_server_association()
            block_loop(srv, 1.5)
            thread = threading.Thread(target=store, args=(assoc,), daemon=True)
            thread.start()
            time.sleep(0.5)                 # the request is in; the handler waits
            raw = assoc.dul.socket.socket
            if how == "A-ABORT":
                raw.sendall(A_ABORT)
            raw.shutdown(socket.SHUT_RDWR)
            thread.join(30)
            gone(server)
            return server

    with capture_logs() as logs:
        server = await asyncio.to_thread(run)
    assert server.dul.ident is None
    assert not server.is_established
    no_failures(logs)
    rows = index_counts(srv.db)["instances"]
    stored = archived_by_uid(srv.archive)
    assert rows == len(stored) <= 1
    if stored:
        assert dataset_bytes(stored[sop_uid(path)]) == dataset_bytes(path)
    await asyncio.to_thread(wait_until, lambda: incoming_files(srv.archive) == [], 10,
                            "no receive file left")
    assert await Scu().aecho(srv.port) == SUCCESS


@pytest.mark.parametrize("when", ["idle", "while a handler waits on the loop"])
async def test_a_disconnect_from_the_admin_api(
        when: str, start_server: Callable[..., Awaitable[RunningServer]],
        make_cfg: Callable[..., Config], dicom_files: DicomFiles) -> None:
    """The admin API runs on the event loop: the disconnect must not wait for the
    association thread, which may itself be waiting on that loop."""
    srv = await start_server(make_cfg({**EVENTS, "monitoring.metrics_port": 0,
                                       "admin.token": TOKEN}))
    base = base_url(srv)
    paths = [dicom_files.generated(InstanceNumber=i) for i in range(3)]
    scu = Scu("DISCO")
    ctx = scu.associate(srv.port, contexts_for(paths))
    assoc = await asyncio.to_thread(ctx.__enter__)
    try:
        server = await asyncio.to_thread(the_server_association)
        assert (await asyncio.to_thread(send, assoc, paths[0])).ok
        assert server.dul.ident is None
        status, live = await http_get(base, "/api/associations", token=TOKEN)
        assert status == 200
        (entry,) = [a for a in live["associations"] if a["calling_ae"] == "DISCO"]
        pending = None
        if when != "idle":
            block_loop(srv, 0.5)
            pending = asyncio.create_task(asyncio.to_thread(send, assoc, paths[1]))
            await asyncio.sleep(0.1)
        started = time.monotonic()
        status, body = await http_call(base, "DELETE", f"/api/associations/{entry['id']}")
        took = time.monotonic() - started
        assert status == 200, body
        assert took < 3.0, f"the disconnect took {took:.1f} s"
        await asyncio.to_thread(wait_until, lambda: assoc.is_aborted, 10,
                                "the A-ABORT at the peer")
        if pending is not None:
            await pending
        await asyncio.to_thread(gone, server)
    finally:
        await asyncio.to_thread(ctx.__exit__, None, None, None)
    rows = index_counts(srv.db)["instances"]
    assert rows == len(archived_by_uid(srv.archive)) in (1, 2)
    await asyncio.to_thread(wait_until, lambda: incoming_files(srv.archive) == [], 10,
                            "no receive file left")


def memory(field: str) -> int:
    """VmRSS or VmHWM (peak since the last clear_refs) of this process, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field}")


async def test_a_large_instance_is_streamed_to_disk_by_the_association_thread(
        start_server: Callable[..., Awaitable[RunningServer]],
        make_cfg: Callable[..., Config], dicom_files: DicomFiles, dcmtk: Dcmtk) -> None:
    srv = await start_server(make_cfg(EVENTS))
    big = dicom_files.big(160 << 20)

    def run() -> tuple[int, str, Association, int]:
        # The client is storescu, another process: this one's peak RSS is the server's.
        # (pynetdicom as the client queues its P-DATA PDUs without bound, so in this
        # process it would measure the client's queue, not the server.)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                    # VmHWM from here on
        before = memory("VmRSS")
        proc = subprocess.Popen(
            [dcmtk.tool("storescu"), "-aet", "MODALITY", "-aec", "PACS",
             "127.0.0.1", str(srv.port), str(big)],
            env=dcmtk.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            server = the_server_association()
            output, _ = proc.communicate(timeout=120)
        finally:
            proc.kill()
            proc.wait()
        grew = memory("VmHWM") - before
        return proc.returncode, output, server, grew

    code, output, server, grew = await asyncio.to_thread(run)
    assert code == 0, output
    await asyncio.to_thread(gone, server)
    assert server.dul.ident is None, "the DUL's thread was started for the C-STORE"
    # The server never holds the 160 MB data set: what grows is its PDU buffers and
    # the file pages the archive's checks touch.
    assert grew < 32 << 20, f"the server's peak RSS grew by {grew >> 20} MB"
    await asyncio.to_thread(wait_for_rows, srv.db, 1)
    stored = archived_by_uid(srv.archive)[sop_uid(big)]
    assert stored.stat().st_size >= big.stat().st_size - 1024
    assert dataset_bytes(stored) == dataset_bytes(big)
