"""Several processes on one archive root (services/archive.py, storage/filestore.py,
storage/journal.py): each with its own identity, FileStore and ArchiveService, one real
SQLite index, real threads. A store never overwrites a file another process placed, waits
while that store is in flight, sets an orphan aside; a start never touches a sibling's
live receive files; a sibling's journal is settled only once it is stale."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pacs_server.config import StorageConfig
from pacs_server.dicom.bridge import LoopBridge
from pacs_server.errors import DuplicateInstance, PathTaken
from pacs_server.index.records import InstanceRecord
from pacs_server.index.repository import IndexRepository
from pacs_server.services.archive import ArchiveService, IndexCatalog, StoreOutcome
from pacs_server.services.reconcile import reconcile
from pacs_server.storage.filestore import FileStore
from support.archive import archived_files, open_intents
from support.index import sqlite_index
from support.instances import DicomFiles, dataset_bytes, file_meta, sop_uid

OLD = time.time() - 3600


class SlowCatalog(IndexCatalog):
    """The real index, committing only once `release` is set: a store held between its
    placement and its commit, as a busy index holds it."""

    def __init__(self, repo: IndexRepository) -> None:
        super().__init__(repo)
        self.release = threading.Event()
        self.placed = threading.Event()

    async def add(self, record: InstanceRecord, replace: bool) -> str | None:
        self.placed.set()
        await asyncio.to_thread(self.release.wait, 10)
        return await super().add(record, replace)


@dataclass
class Node:
    files: FileStore
    archive: ArchiveService


@dataclass
class Shared:
    root: Path
    repo: IndexRepository
    bridge: LoopBridge

    def node(self, identity: str, policy: str = "reject", catalog: IndexCatalog | None = None,
             wait_s: float = 10.0) -> Node:
        files = FileStore(self.root, fsync=False, identity=identity)
        files.prepare()
        cfg = StorageConfig(directory=str(self.root), duplicate_policy=policy, fsync=False)
        archive = ArchiveService(cfg, files, catalog or IndexCatalog(self.repo),
                                 in_flight_s=60.0, wait_s=wait_s)
        return Node(files, archive)

    async def receive(self, node: Node, path: Path) -> StoreOutcome:
        meta = file_meta(path)

        def work() -> StoreOutcome:
            staged = node.archive.stage(path, str(meta.TransferSyntaxUID),
                                        str(meta.MediaStorageSOPClassUID), "SCU")
            return node.archive.store(staged, self.bridge.run)

        return await asyncio.to_thread(work)


@pytest.fixture
async def shared(tmp_path: Path) -> AsyncIterator[Shared]:
    bridge = LoopBridge(asyncio.get_running_loop(), timeout_s=20)
    async with sqlite_index(tmp_path / "pacs.db") as repo:
        yield Shared(tmp_path / "archive", repo, bridge)


def quarantined(root: Path) -> list[Path]:
    q = root / ".quarantine"
    return sorted(p for p in q.rglob("*") if p.is_file()) if q.exists() else []


@pytest.mark.parametrize(("policy", "second"), [
    ("reject", DuplicateInstance), ("ignore", StoreOutcome.ALREADY_STORED)])
async def test_a_store_waits_for_the_siblings_store_in_flight(
        shared: Shared, dicom_files: DicomFiles, policy: str, second: object) -> None:
    """B finds A's placed, uncommitted file: it waits, then the index decides. A's file
    stays where its row points (the file B once took for a leftover and deleted)."""
    slow = SlowCatalog(shared.repo)
    a = shared.node("node-a", policy, catalog=slow)
    b = shared.node("node-b", policy)
    sent = dicom_files.generated()
    first = asyncio.ensure_future(shared.receive(a, sent))
    await asyncio.to_thread(slow.placed.wait, 10)
    later = asyncio.ensure_future(shared.receive(b, sent))
    await asyncio.sleep(0.3)
    assert not later.done()                       # waiting on A's open intent
    slow.release.set()
    assert await first is StoreOutcome.STORED
    if second is DuplicateInstance:
        with pytest.raises(DuplicateInstance):
            await later
    else:
        assert await later is second
    rel = await shared.repo.instance_path(sop_uid(sent))
    assert archived_files(shared.root) == [shared.root / str(rel)]
    assert dataset_bytes(shared.root / str(rel)) == dataset_bytes(sent)
    assert open_intents(shared.root) == [] and quarantined(shared.root) == []


async def test_a_store_in_flight_too_long_is_answered_path_taken(
        shared: Shared, dicom_files: DicomFiles) -> None:
    slow = SlowCatalog(shared.repo)
    a = shared.node("node-a", catalog=slow)
    b = shared.node("node-b", wait_s=0.3)
    sent = dicom_files.generated()
    first = asyncio.ensure_future(shared.receive(a, sent))
    await asyncio.to_thread(slow.placed.wait, 10)
    with pytest.raises(PathTaken):
        await shared.receive(b, sent)
    slow.release.set()
    assert await first is StoreOutcome.STORED
    (placed,) = archived_files(shared.root)       # B removed nothing of A's
    assert dataset_bytes(placed) == dataset_bytes(sent)
    assert open_intents(shared.root) == []


async def test_an_orphan_is_set_aside_not_overwritten(shared: Shared,
                                                      dicom_files: DicomFiles) -> None:
    """A file at the path, no row, no store in flight (its intent is gone): moved to
    .quarantine, and the new copy stored in its place."""
    a = shared.node("node-a")
    sent = dicom_files.generated()
    assert await shared.receive(a, sent) is StoreOutcome.STORED
    rel = str(await shared.repo.instance_path(sop_uid(sent)))
    await shared.repo.writer.close()              # forget the row: a fresh index
    async with sqlite_index(shared.root.parent / "other.db") as repo:
        other = Shared(shared.root, repo, shared.bridge)
        b = other.node("node-b")
        (shared.root / rel).write_bytes(b"orphan bytes")
        os.utime(shared.root / rel, (OLD, OLD))    # older than any store in flight
        assert await other.receive(b, sent) is StoreOutcome.STORED
        assert dataset_bytes(shared.root / rel) == dataset_bytes(sent)
        (aside,) = quarantined(shared.root)
        assert aside.read_bytes() == b"orphan bytes"


class MeetingCatalog(IndexCatalog):
    """The real index, whose first lookup of each store waits for the other store's:
    two stores that found one name taken, both with their intents open."""

    def __init__(self, repo: IndexRepository, meeting: threading.Barrier) -> None:
        super().__init__(repo)
        self.meeting = meeting
        self.met = False

    async def lookup(self, record: InstanceRecord) -> str | None:
        if not self.met:
            self.met = True
            await asyncio.to_thread(self.meeting.wait, 10)
        return await super().lookup(record)


@pytest.mark.parametrize(("policy", "second"), [
    ("reject", DuplicateInstance), ("ignore", StoreOutcome.ALREADY_STORED)])
async def test_two_stores_of_one_orphan_at_once_store_it_once(
        shared: Shared, dicom_files: DicomFiles, policy: str, second: object) -> None:
    """An orphan (a file, no row, nobody storing it) met by two stores at the same
    moment, each seeing the other's intent: one sets it aside and stores, the other
    gets its policy's duplicate answer (before, both waited for the other's intent and
    answered PathTaken)."""
    sent = dicom_files.generated()
    assert await shared.receive(shared.node("node-0"), sent) is StoreOutcome.STORED
    rel = str(await shared.repo.instance_path(sop_uid(sent)))
    await shared.repo.writer.close()              # forget the row: a fresh index
    async with sqlite_index(shared.root.parent / "other.db") as repo:
        other = Shared(shared.root, repo, shared.bridge)
        meeting = threading.Barrier(2)
        a, b = (other.node(name, policy, catalog=MeetingCatalog(repo, meeting), wait_s=5)
                for name in ("node-a", "node-b"))
        (shared.root / rel).write_bytes(b"orphan bytes")
        os.utime(shared.root / rel, (OLD, OLD))    # older than any store in flight
        outcomes = await asyncio.gather(other.receive(a, sent), other.receive(b, sent),
                                        return_exceptions=True)
        assert StoreOutcome.STORED in outcomes
        (other_outcome,) = [o for o in outcomes if o is not StoreOutcome.STORED]
        if second is DuplicateInstance:
            assert isinstance(other_outcome, DuplicateInstance), outcomes
        else:
            assert other_outcome is second
        assert str(await repo.instance_path(sop_uid(sent))) == rel
        assert dataset_bytes(shared.root / rel) == dataset_bytes(sent)
        (aside,) = quarantined(shared.root)
        assert aside.read_bytes() == b"orphan bytes"
        assert open_intents(shared.root) == []
        assert list((shared.root / ".claims").iterdir()) == []


async def test_a_young_file_without_a_visible_intent_is_waited_for(
        shared: Shared, dicom_files: DicomFiles) -> None:
    """A file just written, no row, no intent listed: on a network filesystem another
    node's intent may not be visible yet, so it is not taken for an orphan; its row
    arrives and the store is a duplicate, or it never does and the answer is PathTaken,
    with the file left alone either way."""
    a = shared.node("node-a")
    sent = dicom_files.generated()
    assert await shared.receive(a, sent) is StoreOutcome.STORED
    rel = str(await shared.repo.instance_path(sop_uid(sent)))
    await shared.repo.writer.close()
    async with sqlite_index(shared.root.parent / "other.db") as repo:
        other = Shared(shared.root, repo, shared.bridge)
        b = other.node("node-b", wait_s=0.5)
        with pytest.raises(PathTaken):
            await other.receive(b, sent)
        assert dataset_bytes(shared.root / rel) == dataset_bytes(sent)
        assert quarantined(shared.root) == [] and open_intents(shared.root) == []


async def test_a_stale_sibling_intent_is_not_waited_for_and_is_settled(
        shared: Shared, dicom_files: DicomFiles) -> None:
    """An intent of a node that died an hour ago: not in flight. Its start-up is not
    ours, but once stale its intents are settled by any process (reconcile, stale_s)."""
    a = shared.node("node-a")
    b = shared.node("node-b")
    sent = dicom_files.generated()
    assert await shared.receive(a, sent) is StoreOutcome.STORED
    rel = str(await shared.repo.instance_path(sop_uid(sent)))
    dead = shared.root / ".journal" / "node-dead"
    dead.mkdir()
    link = dead / "0123.abc"
    os.symlink(rel, link)
    os.utime(link, (OLD, OLD), follow_symlinks=False)
    fresh = dead / "4567.def"
    os.symlink("P/never/placed.dcm", fresh)
    assert not b.files.journal.in_flight(Path(rel), 60)      # type: ignore[arg-type]
    report = await reconcile(b.files, IndexCatalog(shared.repo), b.archive.config,
                             stale_s=60, own=False)
    assert (report.intents, report.committed) == (1, 1)
    assert not link.exists() and fresh.is_symlink()          # the young one is left


async def test_a_start_leaves_a_siblings_live_receive_files(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    a = FileStore(root, fsync=False, identity="node-a")
    a.prepare()
    live, stale = a.incoming / "tmp-live.dcm", a.incoming / "tmp-stale.dcm"
    live.write_bytes(b"arriving")
    stale.write_bytes(b"abandoned")
    os.utime(stale, (OLD, OLD))
    loose = root / ".incoming" / "old-layout.part"
    loose.write_bytes(b"from before per-process directories")
    b = FileStore(root, fsync=False, identity="node-b")
    b.prepare()
    assert live.exists() and stale.exists() and not loose.exists()
    assert b.sweep_incoming(600) == 1
    assert live.exists() and not stale.exists()
    (b.incoming / "mine.part").write_bytes(b"x")
    assert b.prepare() == 1                                  # its own: all of them
    assert live.exists()


async def test_two_processes_settling_one_intent_keep_its_file(
        shared: Shared, dicom_files: DicomFiles) -> None:
    """A dead node's placed, unindexed file, settled by two processes at once (its
    restart and a sibling's stale sweep): indexed once, and the loser does not remove
    the file the winner indexed."""
    a = shared.node("node-a")
    sent = dicom_files.generated()
    assert await shared.receive(a, sent) is StoreOutcome.STORED
    rel = str(await shared.repo.instance_path(sop_uid(sent)))
    await shared.repo.writer.close()              # a fresh index: the file is unindexed
    async with sqlite_index(shared.root.parent / "other.db") as repo:
        dead = shared.root / ".journal" / "node-dead"
        dead.mkdir()
        link = dead / "0123.abc"
        os.symlink(rel, link)
        os.utime(link, (OLD, OLD), follow_symlinks=False)
        b, c = (FileStore(shared.root, fsync=False, identity=n) for n in ("node-b", "node-c"))
        catalog = IndexCatalog(repo)
        reports = await asyncio.gather(*(
            reconcile(f, catalog, a.archive.config, stale_s=60, own=False) for f in (b, c)))
        assert sorted(r.indexed for r in reports) == [0, 1]
        assert await repo.instance_path(sop_uid(sent)) == rel
        assert dataset_bytes(shared.root / rel) == dataset_bytes(sent)
