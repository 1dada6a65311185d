"""services/archive.py: ArchiveService with a real FileStore and a real IndexRepository on
a tmp SQLite file, crossing into the loop through a real LoopBridge as in the server.

`stage()` and `store()` run in a worker thread (they block, as in an association thread);
the index calls run on the test's own event loop.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pacs_server.config import StorageConfig
from pacs_server.dicom.bridge import LoopBridge
from pacs_server.errors import DuplicateInstance, IndexUnavailable, UnreadableDataset
from pacs_server.index.repository import IndexRepository
from pacs_server.services.archive import (
    ArchiveService,
    Catalog,
    FileCatalog,
    IndexCatalog,
    StoreOutcome,
)
from pacs_server.storage.filestore import FileStore
from support.archive import archived_files, incoming_files
from support.index import sqlite_index
from support.instances import DicomFiles, dataset_bytes, file_meta, new_dataset, sop_uid


@dataclass
class Env:
    root: Path
    db: Path
    files: FileStore
    repo: IndexRepository
    bridge: LoopBridge

    def archive(self, policy: str = "reject", catalog: Catalog | None = None,
                **storage: Any) -> ArchiveService:
        cfg = StorageConfig(directory=str(self.root), duplicate_policy=policy, fsync=False,
                            **storage)
        return ArchiveService(cfg, self.files, catalog or IndexCatalog(self.repo))


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    files = FileStore(tmp_path / "archive", fsync=False)
    files.prepare()
    bridge = LoopBridge(asyncio.get_running_loop(), timeout_s=10)
    async with sqlite_index(tmp_path / "pacs.db") as repo:
        yield Env(tmp_path / "archive", tmp_path / "pacs.db", files, repo, bridge)


async def receive(env: Env, archive: ArchiveService, path: Path,
                  source_ae: str = "SCU", run: Any = None) -> StoreOutcome:
    """What the C-STORE handler does with a received file, in a worker thread: with the
    bridge as the runner (the row handed straight to the writer), unless `run`."""
    meta = file_meta(path)

    def work() -> StoreOutcome:
        staged = archive.stage(path, str(meta.TransferSyntaxUID),
                               str(meta.MediaStorageSOPClassUID), source_ae)
        return archive.store(staged, run or env.bridge)

    return await asyncio.to_thread(work)


def two_versions(dicom_files: DicomFiles, **second: Any) -> tuple[Path, Path]:
    """Two files with one SOP Instance UID (and study, series) but other content."""
    ds = new_dataset(PatientID="P1", PatientName="First^Version")
    other = copy.deepcopy(ds)
    other.PatientName = "Second^Version"
    for keyword, value in second.items():
        setattr(other, keyword, value)
    return dicom_files.from_dataset(ds), dicom_files.from_dataset(other)


async def test_a_new_instance_is_placed_and_indexed(env: Env, dicom_files: DicomFiles) -> None:
    archive = env.archive()
    sent = dicom_files.generated(PatientID="P1")
    assert await receive(env, archive, sent, source_ae="MODALITY") is StoreOutcome.STORED
    uid = sop_uid(sent)
    rel = await env.repo.instance_path(uid)
    assert rel is not None and rel.startswith("P1/")
    stored = env.root / rel
    assert archived_files(env.root) == [stored]
    assert incoming_files(env.root) == []
    assert dataset_bytes(stored) == dataset_bytes(sent)             # byte for byte
    assert file_meta(stored).SourceApplicationEntityTitle == "MODALITY"
    (ref,) = await env.repo.refs([uid])
    assert ref.size == stored.stat().st_size
    assert (archive.stats.stored, archive.stats.bytes, archive.stats.duplicates) == (
        1, ref.size, 0)
    assert (await env.repo.counts())["instances"] == 1


class CountingCatalog(IndexCatalog):
    """The index catalog, counting which door each row came through."""

    def __init__(self, repo: IndexRepository) -> None:
        super().__init__(repo)
        self.doors: list[str] = []

    async def add(self, record: Any, replace: bool) -> str | None:
        self.doors.append("coroutine")
        return await super().add(record, replace)

    def submit(self, record: Any, replace: bool) -> Any:
        self.doors.append("submit")
        return super().submit(record, replace)


@pytest.mark.parametrize(("runner", "door"), [("bridge", "submit"), ("run", "coroutine")])
@pytest.mark.parametrize("policy", ["reject", "replace"])
async def test_the_bridge_hands_the_row_to_the_writer_and_a_plain_runner_a_coroutine(
        env: Env, dicom_files: DicomFiles, runner: str, door: str, policy: str) -> None:
    catalog = CountingCatalog(env.repo)
    archive = env.archive(policy, catalog=catalog)
    run = env.bridge if runner == "bridge" else env.bridge.run
    first, second = two_versions(dicom_files)
    assert await receive(env, archive, first, run=run) is StoreOutcome.STORED
    assert await env.repo.instance_path(sop_uid(first)) is not None     # committed
    if policy == "replace":
        assert await receive(env, archive, second, run=run) is StoreOutcome.REPLACED
        (stored,) = archived_files(env.root)
        assert dataset_bytes(stored) == dataset_bytes(second)
    assert catalog.doors == [door] * (2 if policy == "replace" else 1)


@pytest.mark.parametrize(("policy", "outcome", "kept"), [
    ("reject", DuplicateInstance, "first"),
    ("ignore", StoreOutcome.ALREADY_STORED, "first"),
    ("replace", StoreOutcome.REPLACED, "second"),
])
async def test_duplicate_policies(env: Env, dicom_files: DicomFiles, policy: str,
                                  outcome: Any, kept: str) -> None:
    archive = env.archive(policy)
    first, second = two_versions(dicom_files)
    assert await receive(env, archive, first) is StoreOutcome.STORED
    if outcome is DuplicateInstance:
        with pytest.raises(DuplicateInstance, match="SOP Instance already stored"):
            await receive(env, archive, second)
    else:
        assert await receive(env, archive, second) is outcome
    (stored,) = archived_files(env.root)
    assert dataset_bytes(stored) == dataset_bytes(first if kept == "first" else second)
    assert incoming_files(env.root) == []              # the refused copy is not left behind
    assert (await env.repo.counts())["instances"] == 1
    assert (archive.stats.stored, archive.stats.duplicates) == (
        (2, 0) if policy == "replace" else (1, 1))


async def test_replace_under_another_patient_moves_the_file(env: Env,
                                                            dicom_files: DicomFiles) -> None:
    archive = env.archive("replace")
    first, second = two_versions(dicom_files, PatientID="P2")
    await receive(env, archive, first)
    old = env.root / str(await env.repo.instance_path(sop_uid(first)))
    assert await receive(env, archive, second) is StoreOutcome.REPLACED
    new = env.root / str(await env.repo.instance_path(sop_uid(first)))
    assert new.relative_to(env.root).parts[0] == "P2"
    assert archived_files(env.root) == [new]
    assert not old.exists()
    assert dataset_bytes(new) == dataset_bytes(second)


async def test_reject_under_another_patient_keeps_the_first_copy_only(
        env: Env, dicom_files: DicomFiles) -> None:
    """Another PatientID means another path: the file goes in, the index refuses it, and
    the new file is removed again."""
    archive = env.archive("reject")
    first, second = two_versions(dicom_files, PatientID="P2")
    await receive(env, archive, first)
    with pytest.raises(DuplicateInstance):
        await receive(env, archive, second)
    (stored,) = archived_files(env.root)
    assert stored.relative_to(env.root).parts[0] == "P1"
    assert not (env.root / "P2").exists()
    assert dataset_bytes(stored) == dataset_bytes(first)


async def test_reconfigure_changes_the_policy_of_the_next_store(
        env: Env, dicom_files: DicomFiles) -> None:
    archive = env.archive("reject")
    first, second = two_versions(dicom_files)
    await receive(env, archive, first)
    with pytest.raises(DuplicateInstance):
        await receive(env, archive, second)
    archive.reconfigure(dataclasses.replace(archive.config, duplicate_policy="replace"))
    assert await receive(env, archive, second) is StoreOutcome.REPLACED
    (stored,) = archived_files(env.root)
    assert dataset_bytes(stored) == dataset_bytes(second)


async def test_an_unindexed_file_at_the_target_is_taken_over(env: Env,
                                                             dicom_files: DicomFiles) -> None:
    """What an interrupted store leaves (file placed, no row) does not block the instance."""
    sent = dicom_files.generated(PatientID="P1")
    # placed without an index (as store_scp does), then made a stale copy
    assert await receive(env, env.archive(catalog=FileCatalog(env.files)), sent) is (
        StoreOutcome.STORED)
    (stored,) = archived_files(env.root)
    stored.write_bytes(b"stale half-written copy")
    assert await env.repo.instance_path(sop_uid(sent)) is None
    assert await receive(env, env.archive("reject"), sent) is StoreOutcome.STORED
    assert await env.repo.instance_path(sop_uid(sent)) == str(stored.relative_to(env.root))
    assert archived_files(env.root) == [stored]
    assert dataset_bytes(stored) == dataset_bytes(sent)


async def test_an_index_failure_leaves_at_most_an_unindexed_file(
        env: Env, dicom_files: DicomFiles) -> None:
    """The index is gone: the store fails, nothing is indexed, the placed file is the only
    leftover (never a row without its file), and the next store of it succeeds."""
    archive = env.archive("reject")
    sent = dicom_files.generated(PatientID="P1")
    await env.repo.close()
    with pytest.raises(IndexUnavailable):
        await receive(env, archive, sent)
    assert incoming_files(env.root) == []
    assert [dataset_bytes(p) for p in archived_files(env.root)] == [dataset_bytes(sent)]
    async with sqlite_index(env.db) as repo:            # the index is back (a restart)
        assert await repo.instance_path(sop_uid(sent)) is None
        archive = env.archive("reject", catalog=IndexCatalog(repo))
        assert await receive(env, archive, sent) is StoreOutcome.STORED
        assert (await repo.counts())["instances"] == 1


async def test_concurrent_stores_of_one_instance(env: Env, dicom_files: DicomFiles) -> None:
    archive = env.archive("reject")
    sent = dicom_files.generated(pixel_bytes=4096)
    results = await asyncio.gather(*(receive(env, archive, sent) for _ in range(4)),
                                   return_exceptions=True)
    assert sorted(type(r).__name__ for r in results) == [
        "DuplicateInstance"] * 3 + ["StoreOutcome"]
    assert len(archived_files(env.root)) == 1
    assert incoming_files(env.root) == []
    assert (archive.stats.stored, archive.stats.duplicates) == (1, 3)


# pydicom warns about what it reads from hostile input; the server logs that, as here.
@pytest.mark.filterwarnings("ignore::UserWarning:pydicom")
async def test_an_unreadable_file_is_refused_before_anything_is_written(
        env: Env, dicom_files: DicomFiles) -> None:
    archive = env.archive()
    with pytest.raises(UnreadableDataset):
        await receive(env, archive, dicom_files.raw(b"\xff" * 100))
    assert archived_files(env.root) == [] and incoming_files(env.root) == []
    assert (await env.repo.counts())["instances"] == 0


async def test_without_an_index_the_file_is_the_record(env: Env,
                                                       dicom_files: DicomFiles) -> None:
    """store_scp without --index-db: a duplicate is recognised by its file."""
    archive = env.archive("reject", catalog=FileCatalog(env.files), naming="flat")
    first, second = two_versions(dicom_files)
    assert await receive(env, archive, first) is StoreOutcome.STORED
    with pytest.raises(DuplicateInstance):
        await receive(env, archive, second)
    assert archived_files(env.root) == [env.root / f"{sop_uid(first)}.dcm"]
    assert (await env.repo.counts())["instances"] == 0
