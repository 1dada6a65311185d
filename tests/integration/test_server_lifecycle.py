"""The in-process server: echo, restart persistence, concurrent SCUs, metrics, start-up errors."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pacs_testing import (
    SUCCESS,
    DicomFiles,
    Scu,
    archived_files,
    contexts_for,
    dataset_bytes,
    file_meta,
    incoming_files,
    index_of,
    send,
    throttle,
    wait_until,
)
from pydicom.uid import generate_uid

from pacs_server.app import PacsApp
from pacs_server.config import Config
from pacs_server.errors import StartupError


async def test_echo(server: PacsApp, scu: Scu) -> None:
    assert await scu.aecho(server.port) == SUCCESS
    echoes = server.metrics.registry.get_sample_value(
        "pacs_dimse_requests_total", {"service": "C-ECHO", "status": "0x0000"})
    assert echoes is not None and echoes >= 2  # the readiness probe's and ours


async def test_echo_from_many_associations_at_once(server: PacsApp) -> None:
    results = await asyncio.gather(*(Scu(f"SCU{i}").aecho(server.port) for i in range(8)))
    assert results == [SUCCESS] * 8


async def test_restart_keeps_the_index(start_server: Callable[..., Any],
                                       make_cfg: Callable[..., Config], scu: Scu,
                                       dicom_files: DicomFiles) -> None:
    cfg = make_cfg()
    first = await start_server(cfg)
    sent = [dicom_files.generated(PatientID=f"P{i}") for i in range(3)]
    assert all(r.ok for r in await scu.astore(first.port, sent))
    await first.stop()
    with pytest.raises(ConnectionError):
        await scu.aecho(first.port)

    # A crash leftover in .incoming is cleaned at the next start.
    root = Path(cfg.storage.directory)
    (root / ".incoming" / "deadbeef.part").write_bytes(b"half written")
    second = await start_server(cfg)
    assert incoming_files(root) == []
    counts = await index_of(second).counts()
    assert (counts["patients"], counts["instances"]) == (3, 3)
    for path in sent:
        uid = str(file_meta(path).MediaStorageSOPInstanceUID)
        rel = await index_of(second).instance_path(uid)
        assert rel is not None
        assert dataset_bytes(root / rel) == dataset_bytes(path)
    # the restarted server still knows they are there
    (again,) = await scu.astore(second.port, [sent[0]])
    assert again.status == 0x0111
    assert (await scu.astore(second.port, [dicom_files.generated()]))[0].ok
    assert (await index_of(second).counts())["instances"] == 4


async def test_concurrent_associations_are_all_indexed(server: PacsApp,
                                                       dicom_files: DicomFiles) -> None:
    threads, per_thread = 6, 6
    batches = [[dicom_files.generated(PatientID=f"PAT{t % 3}", pixel_bytes=256)
                for _ in range(per_thread)] for t in range(threads)]
    results = await asyncio.gather(*(Scu(f"SCU{t}").astore(server.port, batch)
                                     for t, batch in enumerate(batches)))
    assert [[r.status for r in rs] for rs in results] == [[SUCCESS] * per_thread] * threads
    counts = await index_of(server).counts()
    assert (counts["patients"], counts["instances"]) == (3, threads * per_thread)
    uids = [str(file_meta(p).MediaStorageSOPInstanceUID) for batch in batches for p in batch]
    refs = await index_of(server).refs(uids)
    assert len(refs) == len(uids)
    root = Path(server.cfg.storage.directory)
    assert sorted(root / r.path for r in refs) == archived_files(root)
    assert counts["bytes"] == sum((root / r.path).stat().st_size for r in refs)
    # group commit: fewer transactions than instances is the point, but one each is legal
    commits = server.metrics.registry.get_sample_value("pacs_index_commit_batch_size_count")
    assert server.metrics.registry.get_sample_value(
        "pacs_index_commit_batch_size_sum") == threads * per_thread
    assert commits is not None and 1 <= commits <= threads * per_thread


async def test_same_instance_from_many_senders_is_stored_once(
        server: PacsApp, dicom_files: DicomFiles) -> None:
    """Concurrent C-STOREs of one SOP Instance: exactly one wins, the rest are duplicates."""
    path = dicom_files.generated(pixel_bytes=4096)
    barrier = threading.Barrier(6)

    def send_one() -> int:
        scu = Scu()
        with scu.associate(server.port, [(str(file_meta(path).MediaStorageSOPClassUID),
                                          [str(file_meta(path).TransferSyntaxUID)])]) as assoc:
            barrier.wait(10)
            return send(assoc, path).status

    statuses = await asyncio.gather(*(asyncio.to_thread(send_one) for _ in range(6)))
    assert sorted(statuses) == [SUCCESS] + [0x0111] * 5
    root = Path(server.cfg.storage.directory)
    assert len(archived_files(root)) == 1
    assert incoming_files(root) == []
    assert (await index_of(server).counts())["instances"] == 1


async def test_metrics_from_the_apps_own_registry(server: PacsApp, scu: Scu,
                                                  dicom_files: DicomFiles) -> None:
    registry = server.metrics.registry
    sent = [dicom_files.generated(pixel_bytes=1000) for _ in range(3)]
    bad = dicom_files.raw(b"\x00" * 50)
    results = await scu.astore(server.port, [*sent, sent[0], bad])
    assert [r.status for r in results] == [0, 0, 0, 0x0111, 0xC000]
    stored_bytes = sum(p.stat().st_size for p in archived_files(Path(server.cfg.storage.directory)))

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert sample("pacs_dimse_requests_total", service="C-STORE", status="0x0000") == 3
    assert sample("pacs_dimse_requests_total", service="C-STORE", status="0x0111") == 1
    assert sample("pacs_dimse_requests_total", service="C-STORE", status="0xC000") == 1
    assert sample("pacs_store_bytes_total") == stored_bytes
    assert sample("pacs_store_seconds_count") == 3
    assert sample("pacs_index_commit_batch_size_sum") == 3
    # the association closes after release; its gauge returns to zero
    await asyncio.to_thread(wait_until, lambda: sample("pacs_association_active") == 0, 5.0,
                            "pacs_association_active back to 0")
    assert (sample("pacs_associations_total", outcome="accepted") or 0) >= 2  # probe + store
    assert (sample("pacs_associations_total", outcome="released") or 0) >= 2


async def test_metrics_endpoint(start_server: Callable[..., Any],
                                make_cfg: Callable[..., Config], scu: Scu) -> None:
    app = await start_server(make_cfg({"monitoring.metrics_port": 0,
                                       "monitoring.metrics_host": "127.0.0.1"}))
    assert app.metrics_port
    await scu.aecho(app.port)

    def scrape() -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{app.metrics_port}/metrics",
                                    timeout=5) as rsp:
            return str(rsp.read().decode())

    text = await asyncio.to_thread(scrape)
    assert 'pacs_dimse_requests_total{service="C-ECHO",status="0x0000"}' in text
    assert "pacs_association_active" in text


async def test_port_in_use_is_a_startup_error(make_cfg: Callable[..., Config]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        app = PacsApp(make_cfg({"server.port": port}))
        with pytest.raises(StartupError, match=f"port {port} on 127.0.0.1 is already in use"):
            await app.start()
    assert app.repo is None and app.dicom is None  # index and listener closed again


async def test_unwritable_storage_root_is_a_startup_error(make_cfg: Callable[..., Config],
                                                          tmp_path: Path) -> None:
    (tmp_path / "blocker").write_bytes(b"x")
    app = PacsApp(make_cfg({"storage.directory": str(tmp_path / "blocker" / "archive")}))
    with pytest.raises(StartupError, match="is not writable"):
        await app.start()


async def test_stop_waits_for_a_store_in_flight(start_server: Callable[..., Any],
                                                make_cfg: Callable[..., Config],
                                                dicom_files: DicomFiles) -> None:
    """stop() during an association: the store either completes (and is indexed) or
    leaves no trace; never a success without an index row."""
    app = await start_server(make_cfg({"server.shutdown_grace": 5.0}))
    paths = [dicom_files.generated(pixel_bytes=50_000) for _ in range(20)]
    started = threading.Event()
    statuses: list[int] = []

    def sender() -> None:
        scu = Scu()
        try:
            with scu.associate(app.port, [(str(file_meta(paths[0]).MediaStorageSOPClassUID),
                                           [str(file_meta(paths[0]).TransferSyntaxUID)])]) as a:
                for p in paths:
                    statuses.append(send(a, p).status)
                    started.set()
        except ConnectionError:
            pass

    task = asyncio.create_task(asyncio.to_thread(sender))
    await asyncio.to_thread(started.wait, 10)
    await app.stop()
    await task
    ok = statuses.count(SUCCESS)
    assert ok >= 1
    root = Path(app.cfg.storage.directory)
    # reopen the index: every success is indexed and its file is there
    again = await start_server(make_cfg())
    uids = [str(file_meta(p).MediaStorageSOPInstanceUID) for p in paths]
    refs = {r.sop_instance_uid: r for r in await index_of(again).refs(uids)}
    for uid, status in zip(uids, statuses, strict=False):
        if status == SUCCESS:
            assert uid in refs
    for ref in refs.values():
        assert (root / ref.path).is_file()
    assert len(refs) == ok


async def test_unknown_uid_lookup(server: PacsApp) -> None:
    assert await index_of(server).instance_path(generate_uid()) is None


async def test_sender_vanishing_mid_transfer_leaves_no_trace(server: PacsApp,
                                                             dicom_files: DicomFiles) -> None:
    """The sender's connection drops half-way through a dataset (crash, cable): no index
    row, no archived file, the association is gone and the server still answers.

    (pynetdicom's own abort() would queue the A-ABORT behind the remaining data, so the
    connection is cut at the socket instead.)
    """
    big = dicom_files.big(16 * 1024 * 1024)
    root = Path(server.cfg.storage.directory)
    outcome: dict[str, Any] = {}
    under_way = threading.Event()

    def sender() -> None:
        try:
            with Scu("VANISHER").associate(server.port, contexts_for([big])) as assoc:
                throttle(assoc, 8 * 1024 * 1024)
                outcome["assoc"] = assoc
                under_way.set()
                outcome["result"] = send(assoc, big)
        except Exception as exc:  # the broken connection may surface here too
            outcome["error"] = exc

    task = asyncio.create_task(asyncio.to_thread(sender))
    await asyncio.to_thread(under_way.wait, 10)

    def half_way() -> bool:
        return any(f.stat().st_size > 1024 * 1024 for f in incoming_files(root)
                   if f.exists())

    await asyncio.to_thread(wait_until, half_way, 30, "the transfer to be under way")
    outcome["assoc"].dul.socket.socket.shutdown(socket.SHUT_RDWR)
    await task
    result = outcome.get("result")
    assert result is None or result.status != SUCCESS
    registry = server.metrics.registry
    await asyncio.to_thread(
        wait_until, lambda: registry.get_sample_value("pacs_association_active") == 0, 10,
        "the association to be gone")
    assert archived_files(root) == []
    assert (await index_of(server).counts())["instances"] == 0
    assert await Scu().aecho(server.port) == SUCCESS
