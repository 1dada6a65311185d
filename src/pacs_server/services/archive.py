"""ArchiveService: the store path. File first (fsynced, renamed), index second, then ACK.

`stage()` runs in the association's thread (parsing and copying are blocking work);
`commit()` runs on the event loop, reached through the bridge. A failure after the
file is placed removes it again, so the only possible leftover of a crash is an
unindexed file, never an index row without its file.
"""

from __future__ import annotations

import asyncio
import enum
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

import structlog

from pacs_server.config import StorageConfig
from pacs_server.errors import DuplicateInstance
from pacs_server.index.records import InstanceRecord
from pacs_server.index.repository import IndexRepository
from pacs_server.services.ingest import (
    StagedInstance,
    build_record,
    dataset_offset,
    file_meta_bytes,
    read_record,
)
from pacs_server.storage.filestore import FileStore, storage_errors

log = structlog.get_logger(__name__)


class StoreOutcome(enum.Enum):
    STORED = "stored"
    REPLACED = "replaced"
    ALREADY_STORED = "already_stored"   # duplicate_policy: ignore


class Catalog(Protocol):
    """What the archive needs from an index: find a duplicate, record an instance."""

    async def lookup(self, record: InstanceRecord) -> str | None: ...

    async def add(self, record: InstanceRecord, replace: bool) -> str | None: ...


class IndexCatalog:
    """Catalog backed by the SQL index."""

    def __init__(self, repo: IndexRepository) -> None:
        self.repo = repo

    async def lookup(self, record: InstanceRecord) -> str | None:
        return await self.repo.instance_path(record.sop_instance_uid)

    async def add(self, record: InstanceRecord, replace: bool) -> str | None:
        return await self.repo.add_instance(record, replace=replace)


class FileCatalog:
    """Catalog without an index (store_scp without --index-db): the file is the record."""

    def __init__(self, files: FileStore) -> None:
        self.files = files

    async def lookup(self, record: InstanceRecord) -> str | None:
        exists = await asyncio.to_thread(self.files.exists, record.rel_path)
        return str(record.rel_path) if exists else None

    async def add(self, record: InstanceRecord, replace: bool) -> str | None:
        return str(record.rel_path) if replace else None


@dataclass
class ArchiveStats:
    """Counters since start (store_scp's status line and summary)."""

    stored: int = 0
    bytes: int = 0
    duplicates: int = 0
    failed: int = 0


class ArchiveService:
    """Receives instances into the archive according to the storage configuration."""

    def __init__(self, cfg: StorageConfig, files: FileStore, catalog: Catalog) -> None:
        self._cfg = cfg
        self.files = files
        self.catalog = catalog
        self.stats = ArchiveStats()
        self._stats_lock = threading.Lock()
        self._inflight: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    def reconfigure(self, cfg: StorageConfig) -> None:
        """Swap in a new storage section (duplicate_policy is reloadable)."""
        self._cfg = cfg

    @property
    def config(self) -> StorageConfig:
        return self._cfg

    # ----------------------------------------------------------- worker thread side
    def stage(self, received: Path, transfer_syntax: str, request_sop_class: str,
              source_ae: str) -> StagedInstance:
        """Parse the received file and copy it, with our File Meta, into a .part file.

        Raises:
            UnreadableDataset, DatasetMismatch: the dataset is not acceptable.
            StorageFull, StorageUnavailable: the archive cannot be written.
        """
        with open(received, "rb") as fh:
            offset = dataset_offset(fh)
            ds, header, header_syntax = read_record(fh, offset, transfer_syntax)
            record = build_record(ds, header, header_syntax, transfer_syntax,
                                  request_sop_class, source_ae, self._cfg.naming)
            length = os.fstat(fh.fileno()).st_size - offset
            meta = file_meta_bytes(record.sop_class_uid, record.sop_instance_uid,
                                   transfer_syntax, source_ae)
            part = self.files.write_part(meta, fh, offset, length)
        record.size = len(meta) + length
        return StagedInstance(record, part)

    def discard(self, staged: StagedInstance | None) -> None:
        if staged is not None:
            self.files.discard(staged.part)

    def count_failure(self) -> None:
        with self._stats_lock:
            self.stats.failed += 1

    # ----------------------------------------------------------- event loop side
    async def commit(self, staged: StagedInstance) -> StoreOutcome:
        """Place the staged file and index it; returns only when both are durable.

        Raises:
            DuplicateInstance: already archived and the policy is `reject`.
            IndexUnavailable, StorageFull, StorageUnavailable.
        """
        rec = staged.record
        policy = self._cfg.duplicate_policy
        async with self._guard(rec.sop_instance_uid):
            existing = await self.catalog.lookup(rec)
            if existing is not None and policy != "replace":
                await asyncio.to_thread(self.files.discard, staged.part)
                with self._stats_lock:
                    self.stats.duplicates += 1
                if policy == "reject":
                    raise DuplicateInstance(
                        f"SOP Instance {rec.sop_instance_uid} is already stored")
                return StoreOutcome.ALREADY_STORED
            await asyncio.to_thread(self._place, staged)
            try:
                old = await self.catalog.add(rec, replace=existing is not None)
            except BaseException:
                if existing is None:
                    await asyncio.to_thread(self.files.remove, rec.rel_path)
                raise
            if old is not None and old != str(rec.rel_path):
                await asyncio.to_thread(self.files.remove, PurePosixPath(old))
        with self._stats_lock:
            self.stats.stored += 1
            self.stats.bytes += rec.size
        return StoreOutcome.REPLACED if existing is not None else StoreOutcome.STORED

    def _place(self, staged: StagedInstance) -> None:
        with storage_errors():
            self.files.place(staged.part, staged.record.rel_path)

    @asynccontextmanager
    async def _guard(self, uid: str) -> AsyncIterator[None]:
        """Serialise concurrent stores of the same SOP Instance UID."""
        entry = self._inflight.get(uid)
        if entry is None:
            entry = self._inflight[uid] = (asyncio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._inflight[uid]
