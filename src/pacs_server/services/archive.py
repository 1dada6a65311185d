"""ArchiveService: the store path. File first (fsynced, placed), index second, then ACK.

`stage()` and `store()` run in the association's thread (parsing, copying, fsync and
rename are blocking work); only the index calls cross to the event loop, through the
runner the caller passes (the bridge). Each placement is announced in the journal
first, so a crash (or an ambiguous index failure) between placing the file and
committing its row leaves an intent that the next start reconciles; never an index
row without its file.

Several processes (workers, nodes) may store the same SOP Instance UID at once into one
archive and one index. The file name is taken with create-if-absent (a link), so a
store never overwrites a file it did not place; a store that finds the name taken
waits while another process has it in flight (its journal intent is open), then lets
the index decide: indexed → duplicate_policy; not indexed and nobody storing it → an
orphan, moved aside to .quarantine, never deleted. With `replace`, which does overwrite,
the stores of one path take turns across processes under a path claim
(storage/journal.PathClaims); so do stores of any policy once they found the name taken
and not indexed (two stores meeting one orphan).
"""

from __future__ import annotations

import asyncio
import enum
import os
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol, cast

import structlog

from pacs_server.config import StorageConfig
from pacs_server.errors import DuplicateInstance, PacsError, PathTaken, StorageFull
from pacs_server.index.records import InstanceRecord
from pacs_server.index.repository import IndexRepository
from pacs_server.services.dataset_check import check_dataset
from pacs_server.services.ingest import (
    INDEXED_TAGS,
    StagedInstance,
    build_record,
    dataset_offset,
    file_meta_bytes,
    read_record,
)
from pacs_server.services.store_turns import StoreTurns
from pacs_server.storage.filestore import FileStore

log = structlog.get_logger(__name__)

_PLACE_ATTEMPTS = 4          # taking turns, an orphan set aside, the name taken again: give up

Runner = Callable[[Coroutine[Any, Any, Any]], Any]


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

    def submit(self, record: InstanceRecord, replace: bool) -> Future[str | None]:
        """`add` from an association thread, without a coroutine (IndexWriter.submit)."""
        return self.repo.submit_instance(record, replace)


class FileCatalog:
    """Catalog without an index (store_scp without --index-db): the file is the record."""

    def __init__(self, files: FileStore) -> None:
        self.files = files

    async def lookup(self, record: InstanceRecord) -> str | None:
        exists = await asyncio.to_thread(self.files.exists, record.rel_path)
        return str(record.rel_path) if exists else None

    async def add(self, record: InstanceRecord, replace: bool) -> str | None:
        return None


@dataclass(frozen=True)
class StoredInstance:
    """What `receive()` archived."""

    sop_instance_uid: str
    size: int
    outcome: StoreOutcome
    patient_id: str = ""
    study_uid: str = ""
    series_uid: str = ""


@dataclass
class ArchiveStats:
    """Counters since start (store_scp's status line and summary)."""

    stored: int = 0
    bytes: int = 0
    duplicates: int = 0
    failed: int = 0


class ArchiveService:
    """Receives instances into the archive according to the storage configuration.

    Args:
        in_flight_s: how long a store may hold its placement intent (the longest index
            call, the bridge's timeout, plus a margin); an older intent of another
            process is taken for abandoned.
        wait_s: how long a store waits for another process's store of the same name.
    """

    def __init__(self, cfg: StorageConfig, files: FileStore, catalog: Catalog,
                 in_flight_s: float = 120.0, wait_s: float = 60.0) -> None:
        self._cfg = cfg
        self._in_flight_s = in_flight_s
        self.files = files
        self.catalog = catalog
        self.stats = ArchiveStats()
        self._stats_lock = threading.Lock()
        self._turns = StoreTurns(files.claims, in_flight_s, wait_s)
        self._below_reserve = False     # logged once per crossing, not per refused store

    def reconfigure(self, cfg: StorageConfig) -> None:
        """Swap in a new storage section (duplicate_policy is reloadable)."""
        self._cfg = cfg

    @property
    def config(self) -> StorageConfig:
        return self._cfg

    def check_free_space(self, incoming: int = 0) -> None:
        """Refuse before anything is copied into the archive when storing `incoming`
        bytes would leave less than `storage.min_free_bytes` free (0xA700, PS3.4 B.2.3).

        Raises:
            StorageFull: the archive filesystem is below its reserve.
        """
        reserve = self._cfg.min_free_bytes
        if reserve <= 0:
            return
        try:
            free = self.files.free_bytes()
        except OSError:
            return   # the store itself will report an unusable archive
        if free - incoming < reserve:
            if not self._below_reserve:
                self._below_reserve = True
                log.warning("storage.below_reserve", free_bytes=free, min_free_bytes=reserve)
            # Error Comment is LO (64 characters): the key first, then the numbers.
            raise StorageFull(f"storage.min_free_bytes: only {free} bytes free")
        if self._below_reserve:
            self._below_reserve = False
            log.info("storage.reserve_recovered", free_bytes=free, min_free_bytes=reserve)

    # ----------------------------------------------------------- worker thread side
    def stage(self, received: Path, transfer_syntax: str, request_sop_class: str,
              source_ae: str, adopt: bool = False) -> StagedInstance:
        """Parse the received file and copy it, with our File Meta, into a .part file.

        With `adopt` the received file itself becomes the staged file (fsynced, not
        copied) when it lies in this process's receive directory and already starts
        with the File Meta we would write (dicom/receive.py writes it so).

        Raises:
            UnreadableDataset, DatasetMismatch: the dataset is not acceptable.
            StorageFull, StorageUnavailable: the archive cannot be written.
        """
        with open(received, "rb") as fh:
            offset = dataset_offset(fh)
            # The whole dataset, to its last byte, before anything is parsed or kept.
            walked = check_dataset(fh, offset, transfer_syntax, INDEXED_TAGS)
            ds, header, header_syntax = read_record(fh, offset, transfer_syntax, walked)
            record = build_record(ds, header, header_syntax, transfer_syntax,
                                  request_sop_class, source_ae, self._cfg.naming)
            length = os.fstat(fh.fileno()).st_size - offset
            meta = file_meta_bytes(record.sop_class_uid, record.sop_instance_uid,
                                   transfer_syntax, source_ae)
            if adopt and offset == len(meta) and self.files.holds_incoming(received) \
                    and os.pread(fh.fileno(), offset, 0) == meta:
                part = self.files.adopt_part(received, fh.fileno())
            else:
                part = self.files.write_part(meta, fh, offset, length)
        record.size = len(meta) + length
        return StagedInstance(record, part)

    def receive(self, received: Path, transfer_syntax: str, request_sop_class: str,
                source_ae: str, run: Runner, request_uid: str = "",
                adopt: bool = False) -> StoredInstance:
        """Stage and store one received file: the whole C-STORE in one call.

        The staged copy is removed on any failure; failures other than a duplicate are
        counted in `stats.failed`. `adopt`: as `stage()` (the caller gives the file up).

        Raises:
            PacsError: as `stage()` and `store()`.
        """
        if self._cfg.min_free_bytes > 0:      # (two stat calls saved when it is off)
            self.check_free_space(received.stat().st_size if received.exists() else 0)
        staged: StagedInstance | None = None
        try:
            staged = self.stage(received, transfer_syntax, request_sop_class, source_ae,
                                adopt)
            rec = staged.record
            if request_uid and request_uid != rec.sop_instance_uid:
                log.warning("c_store.uid_mismatch", request_uid=request_uid,
                            dataset_uid=rec.sop_instance_uid)
            outcome = self.store(staged, run)
        except BaseException as exc:
            if staged is not None:
                self.files.discard(staged.part)
            if not isinstance(exc, DuplicateInstance):
                with self._stats_lock:
                    self.stats.failed += 1
            raise
        return StoredInstance(rec.sop_instance_uid, rec.size, outcome,
                              str(rec.patient.get("patient_id", "")), rec.study_instance_uid,
                              rec.series_instance_uid)

    # ----------------------------------------------------------- the store protocol
    def store(self, staged: StagedInstance, run: Runner) -> StoreOutcome:
        """Place the staged file and index it; returns only when both are durable.

        Runs in the association's thread; `run` executes a coroutine on the event loop
        (the bridge) for the index calls. File placement is atomic create-if-absent, so
        the common case costs one index transaction and no lookup.

        Raises:
            DuplicateInstance: already archived and the policy is `reject`.
            IndexUnavailable, StorageFull, StorageUnavailable.
        """
        rec = staged.record
        policy = self._cfg.duplicate_policy
        journal = self.files.journal
        with self._turns.uid(rec.sop_instance_uid), ExitStack() as held:
            if policy == "replace":
                held.enter_context(self._turns.path(rec.rel_path))
            # Announced before it is placed: a crash from here to the commit leaves an
            # intent that the next start reconciles (services/reconcile.py).
            intent: list[Path | None] = [journal.open(rec.rel_path, staged.part)]
            try:
                outcome, superseded = self._place_and_index(staged, run, policy, intent,
                                                            held)
            except (DuplicateInstance, PathTaken):
                journal.close(intent[0])  # nothing placed, or the placement undone
                raise
            # Any other error keeps the intent open: an index timeout is ambiguous, and
            # a failed fsync may follow a rename. The next start sorts it out.
            journal.close(intent[0])
        if superseded is not None:
            self._remove_superseded(rec, superseded, run)
        if outcome is not StoreOutcome.ALREADY_STORED:
            self._count_stored(rec.size)
        return outcome

    def _place_and_index(self, staged: StagedInstance, run: Runner, policy: str,
                         intent: list[Path | None], held: ExitStack
                         ) -> tuple[StoreOutcome, PurePosixPath | None]:
        """The outcome, and with `replace` the path of the file the new row superseded
        (to remove once this path's claim is released), if it was another path.
        `intent`: this store's open intent (replaced if `_place` takes turns)."""
        rec = staged.record
        replaced = self._place(staged, run, policy, intent, held)
        if replaced is None:
            return self._duplicate(rec, policy), None
        # Any other error leaves the placed file (and its intent): the row may or may
        # not have been committed (a timeout is ambiguous), and a row without its file
        # is the one outcome we never allow.
        if policy == "replace":
            old = self._index(rec, True, run)
            outcome = (StoreOutcome.REPLACED if old is not None or replaced
                       else StoreOutcome.STORED)
            if old is not None and old != str(rec.rel_path):
                return outcome, PurePosixPath(old)
            return outcome, None
        try:
            self._index(rec, False, run)
        except DuplicateInstance:
            # Indexed already, normally under another path (e.g. PatientID changed):
            # the file at our path is the one we linked, ours to remove. Unless the row
            # names this very path (another process's reconciliation indexed the
            # orphan we set aside meanwhile): then it names our file, which stays.
            if run(self.catalog.lookup(rec)) != str(rec.rel_path):
                self.files.remove(rec.rel_path)
            return self._duplicate(rec, policy), None
        return StoreOutcome.STORED, None

    def _index(self, rec: InstanceRecord, replace: bool, run: Runner) -> str | None:
        """`catalog.add` through `run`; handed straight to the index writer's queue when
        the catalog takes rows from this thread (`submit`) and the runner can wait for
        them (`wait`, the bridge): no coroutine on the loop per instance."""
        submit = getattr(self.catalog, "submit", None)
        wait = getattr(run, "wait", None)
        if submit is not None and wait is not None:
            return cast("str | None", wait(submit(rec, replace)))
        return cast("str | None", run(self.catalog.add(rec, replace)))

    def _remove_superseded(self, rec: InstanceRecord, old: PurePosixPath, run: Runner) -> None:
        """With `replace`, remove the file at `old` that the new row superseded, under
        that path's claim, unless the row names it again: another node's replace of
        the same instance at `old` (the old Patient ID, say) committed after ours, and
        its file must stay."""
        try:
            with self._turns.path(old):
                if run(self.catalog.lookup(rec)) != str(old):
                    self.files.remove(old)
        except PacsError as exc:
            # The new row is committed: the store succeeded. The old file stays, a file
            # without a row, listed by `pacsctl verify` as unindexed.
            log.warning("storage.superseded_kept", path=str(old), error=str(exc))

    def _place(self, staged: StagedInstance, run: Runner, policy: str,
               intent: list[Path | None], held: ExitStack) -> bool | None:
        """Give the staged file its final name: False placed new, True replaced a file
        (policy `replace`), None a duplicate (the staged file is discarded).

        Raises:
            PathTaken: the name stayed taken (another process's store did not
                finish within `wait_s`, or orphans kept reappearing).
        """
        rec = staged.record
        turns = False           # taking turns with other stores of this path
        for _ in range(_PLACE_ATTEMPTS):
            if self.files.place_new(staged.part, rec.rel_path):
                return False
            # The name is taken by a file this store did not place.
            if policy == "replace":
                self._turns.wait_until(lambda: None if self.files.journal.in_flight(
                    rec.rel_path, self._in_flight_s) else "free", rec.rel_path)
                self.files.place(staged.part, rec.rel_path)
                return True
            if not turns:
                if run(self.catalog.lookup(rec)) is not None:
                    self.files.discard(staged.part)     # a duplicate, at once
                    return None
                self._take_turns(rec.rel_path, staged.part, intent, held)
                turns = True
                continue
            verdict = self._turns.wait_until(lambda: self._taken_by(rec, run, intent[0]),
                                             rec.rel_path)
            if verdict == "indexed":
                self.files.discard(staged.part)
                return None
            # Nobody stores it and no row names it: left by an interrupted store whose
            # intent is gone. Moved aside, never overwritten; then the name is ours.
            if verdict == "orphan" and self.files.set_aside(rec.rel_path):
                log.warning("storage.orphan_set_aside", path=str(rec.rel_path))
        raise PathTaken(f"archive path stays taken: {rec.rel_path}")

    def _take_turns(self, rel: PurePosixPath, part: Path, intent: list[Path | None],
                    held: ExitStack) -> None:
        """The name is taken and not indexed (`reject`/`ignore`): from here this store
        takes turns with every other store of `rel` that met the same conflict, under
        the path claim `replace` uses, held until the row is committed.

        Several stores can meet one orphan (or one store in flight) at the same moment;
        each waiting for the others' open intents, none would go on (0xA700 for all).
        So the intent is closed before waiting for the claim (this store placed
        nothing yet) and opened again once the claim is held: the holder waits only
        for stores that placed a file and are committing its row, never for another
        claimant. The common case (the name free) never gets here.
        """
        journal = self.files.journal
        journal.close(intent[0])
        intent[0] = None
        held.enter_context(self._turns.path(rel))
        intent[0] = journal.open(rel, part)

    def _taken_by(self, rec: InstanceRecord, run: Runner, intent: Path | None) -> str | None:
        """What holds the name: "indexed" (a duplicate), "orphan", "free" (gone since),
        or None while another store may still be placing or committing it."""
        rel = rec.rel_path
        # Indexed already: a duplicate, whoever else is storing it now (two stores of a
        # stored instance at once would otherwise wait for each other's intent).
        if run(self.catalog.lookup(rec)) is not None:
            return "indexed"
        # Another process's store has it in flight (this process's stores of one UID
        # take turns already, `StoreTurns.uid`): wait for its commit.
        if self.files.journal.in_flight(rel, self._in_flight_s):
            return None
        age = self.files.age(rel)
        if age is None:
            return "free"
        # Written recently and no intent seen: on a network filesystem another node's
        # intent may not be listed here yet, so wait for its row; unless no other
        # process uses this archive, or this process left an intent for it open itself
        # (an earlier ambiguous failure).
        journal = self.files.journal
        if age < self._in_flight_s and journal.shared() and not (
                intent is not None and journal.left_open(rel, intent)):
            return None
        return "orphan"

    def _duplicate(self, rec: InstanceRecord, policy: str) -> StoreOutcome:
        with self._stats_lock:
            self.stats.duplicates += 1
        if policy == "reject":
            # Reason first: the Error Comment keeps only 64 characters.
            raise DuplicateInstance(f"SOP Instance already stored: {rec.sop_instance_uid}")
        return StoreOutcome.ALREADY_STORED

    def _count_stored(self, size: int) -> None:
        with self._stats_lock:
            self.stats.stored += 1
            self.stats.bytes += size
