"""The in-process server: echo, restart persistence, concurrent SCUs, metrics, start-up errors."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid
from structlog.testing import capture_logs

from pacs_server.app import PacsApp
from pacs_server.config import Config
from pacs_server.errors import StartupError
from support.archive import archived_files, incoming_files, index_counts, index_rows
from support.instances import DicomFiles, dataset_bytes, file_meta, sop_uid
from support.polling import wait_until
from support.scu import SUCCESS, Scu, contexts_for, identifier, send, throttle
from support.server import RunningServer


def open_files_under(directory: Path) -> list[str]:
    """Files below `directory` that this process holds open (Linux /proc)."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(directory) + os.sep):
            out.append(target)
    return out


async def test_echo(server: RunningServer, scu: Scu) -> None:
    assert await scu.aecho(server.port) == SUCCESS
    echoes = server.sample("pacs_dimse_requests_total", service="C-ECHO", status="0x0000")
    assert echoes is not None and echoes >= 2  # the readiness probe's and ours


async def test_echo_from_many_associations_at_once(server: RunningServer) -> None:
    results = await asyncio.gather(*(Scu(f"SCU{i}").aecho(server.port) for i in range(8)))
    assert results == [SUCCESS] * 8


async def test_restart_keeps_the_index(start_server: Callable[..., Any],
                                       make_cfg: Callable[..., Config], scu: Scu,
                                       dicom_files: DicomFiles) -> None:
    cfg = make_cfg()
    first = await start_server(cfg)
    sent = [dicom_files.generated(PatientID=f"P{i}") for i in range(3)]
    assert all(r.ok for r in await scu.astore(first.port, sent))
    await asyncio.to_thread(first.stop)
    with pytest.raises(ConnectionError):
        await scu.aecho(first.port)

    # A crash leftover in .incoming is cleaned at the next start.
    root = Path(cfg.storage.directory)
    (root / ".incoming" / "deadbeef.part").write_bytes(b"half written")
    second = await start_server(cfg)
    assert incoming_files(root) == []
    counts = index_counts(second.db)
    assert (counts["patients"], counts["instances"]) == (3, 3)
    rows = index_rows(second.db)
    for path in sent:
        rel = rows[sop_uid(path)]
        assert dataset_bytes(root / rel) == dataset_bytes(path)
    # the restarted server still knows they are there
    (again,) = await scu.astore(second.port, [sent[0]])
    assert again.status == 0x0111
    assert (await scu.astore(second.port, [dicom_files.generated()]))[0].ok
    assert index_counts(second.db)["instances"] == 4


async def test_concurrent_associations_are_all_indexed(server: RunningServer,
                                                       dicom_files: DicomFiles) -> None:
    threads, per_thread = 6, 6
    batches = [[dicom_files.generated(PatientID=f"PAT{t % 3}", pixel_bytes=256)
                for _ in range(per_thread)] for t in range(threads)]
    results = await asyncio.gather(*(Scu(f"SCU{t}").astore(server.port, batch)
                                     for t, batch in enumerate(batches)))
    assert [[r.status for r in rs] for rs in results] == [[SUCCESS] * per_thread] * threads
    counts = index_counts(server.db)
    assert (counts["patients"], counts["instances"]) == (3, threads * per_thread)
    uids = [sop_uid(p) for batch in batches for p in batch]
    rows = index_rows(server.db)
    assert set(rows) == set(uids)
    root = server.archive
    assert sorted(root / rel for rel in rows.values()) == archived_files(root)
    assert counts["bytes"] == sum((root / rel).stat().st_size for rel in rows.values())
    # group commit: fewer transactions than instances is the point, but one each is legal
    commits = server.sample("pacs_index_commit_batch_size_count")
    assert server.sample("pacs_index_commit_batch_size_sum") == threads * per_thread
    assert commits is not None and 1 <= commits <= threads * per_thread


async def test_same_instance_from_many_senders_is_stored_once(
        server: RunningServer, dicom_files: DicomFiles) -> None:
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
    root = server.archive
    assert len(archived_files(root)) == 1
    assert incoming_files(root) == []
    assert index_counts(server.db)["instances"] == 1


async def test_metrics_from_the_apps_own_registry(server: RunningServer, scu: Scu,
                                                  dicom_files: DicomFiles) -> None:
    sent = [dicom_files.generated(pixel_bytes=1000) for _ in range(3)]
    bad = dicom_files.raw(b"\x00" * 50)
    results = await scu.astore(server.port, [*sent, sent[0], bad])
    assert [r.status for r in results] == [0, 0, 0, 0x0111, 0xC000]
    stored_bytes = sum(p.stat().st_size for p in archived_files(server.archive))
    sample = server.sample
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
    with capture_logs() as logs:
        app = await start_server(make_cfg({"monitoring.metrics_port": 0,
                                           "monitoring.metrics_host": "127.0.0.1"}))
    (started,) = [e for e in logs if e["event"] == "server.started"]
    metrics_port = started["metrics_port"]       # port 0: the bound one is logged
    assert metrics_port
    await scu.aecho(app.port)

    def scrape() -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                    timeout=5) as rsp:
            return str(rsp.read().decode())

    text = await asyncio.to_thread(scrape)
    assert 'pacs_dimse_requests_total{service="C-ECHO",status="0x0000"}' in text
    assert "pacs_association_active" in text


async def test_port_in_use_is_a_startup_error(make_cfg: Callable[..., Config],
                                              tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = make_cfg({"server.port": port})
        app = PacsApp(cfg)
        with pytest.raises(StartupError, match=f"port {port} on 127.0.0.1 is already in use"):
            await app.start()
    # the index was opened (and migrated) before the listener failed, and closed again
    assert index_counts(Path(cfg.database.path))["instances"] == 0
    assert open_files_under(tmp_path) == []


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
    await asyncio.to_thread(app.stop)
    await task
    ok = statuses.count(SUCCESS)
    assert ok >= 1
    root = app.archive
    # reopen the index: every success is indexed and its file is there
    again = await start_server(make_cfg())
    uids = [sop_uid(p) for p in paths]
    rows = index_rows(again.db)
    assert set(rows) <= set(uids)
    for uid, status in zip(uids, statuses, strict=False):
        if status == SUCCESS:
            assert uid in rows
    for rel in rows.values():
        assert (root / rel).is_file()
    assert len(rows) == ok


async def test_unknown_uid_lookup(server: RunningServer, scu: Scu) -> None:
    """An instance nobody stored: no C-FIND match, and no index row."""
    uid = generate_uid()
    rsps = await asyncio.to_thread(scu.find, server.port, identifier("IMAGE", SOPInstanceUID=uid))
    assert [(r.status, r.identifier) for r in rsps] == [(SUCCESS, None)]
    assert uid not in index_rows(server.db)


async def test_sender_vanishing_mid_transfer_leaves_no_trace(server: RunningServer,
                                                             dicom_files: DicomFiles) -> None:
    """The sender's connection drops half-way through a dataset (crash, cable): no index
    row, no archived file, the association is gone and the server still answers.

    (pynetdicom's own abort() would queue the A-ABORT behind the remaining data, so the
    connection is cut at the socket instead.)
    """
    big = dicom_files.big(16 * 1024 * 1024)
    root = server.archive
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
    await asyncio.to_thread(
        wait_until, lambda: server.sample("pacs_association_active") == 0, 10,
        "the association to be gone")
    assert archived_files(root) == []
    assert index_counts(server.db)["instances"] == 0
    assert await Scu().aecho(server.port) == SUCCESS


async def test_reload_applies_nothing_unless_a_reloadable_key_changed(
        start_server: Callable[..., Any], make_cfg: Callable[..., Config], scu: Scu,
        tmp_path: Path) -> None:
    """SIGHUP's work in-process: an unchanged, an invalid and a restart-only file leave
    the running configuration as it is, each with its own log event."""
    config = tmp_path / "pacs.yaml"
    config.write_text("server:\n  max_associations: 50\n", encoding="utf-8")
    srv = await start_server(make_cfg(path=config), reload_config=lambda: make_cfg(path=config))
    with capture_logs() as logs:
        assert srv.reload() is False
        config.write_text("server: [\n", encoding="utf-8")
        assert srv.reload() is False
        config.write_text("server:\n  max_associations: 7\n", encoding="utf-8")
        assert srv.reload() is False
    seen = [e for e in logs if e["event"].startswith("config.")]
    assert [e["event"] for e in seen] == ["config.reload_unchanged", "config.reload_rejected",
                                          "config.restart_required"]
    assert seen[0]["source"] == str(config)
    assert str(config) in seen[1]["error"] and "YAML syntax error" in seen[1]["error"]
    assert seen[2]["keys"] == ["server.max_associations"]
    assert await scu.aecho(srv.port) == SUCCESS


async def test_reload_without_a_config_source(server: RunningServer) -> None:
    with capture_logs() as logs:
        assert server.reload() is False
    assert [e["event"] for e in logs] == ["config.reload_unavailable"]
