"""Reconcile the archive with the index after a crash, from the placement journal.

Only what could have been in flight is looked at: the intents left open in
<archive>/.journal/<identity> (written before every placement, removed after its index
commit; `storage/journal.PlacementJournal`), not the whole tree, so the cost at start
is proportional to the stores interrupted, not to the archive. A process settles its
own intents at start, and those of other processes (nodes, workers sharing the archive)
only once they are older than the longest a store can hold one (`stale_s`): a sibling's
younger intent may be a live store. For each intent:

* no file at the path: nothing was placed (or it was undone) → the intent is dropped;
* the file is indexed at that path: the crash came after the commit → dropped;
* the file is not indexed: it was never acknowledged (the sender will retry, and
  duplicate_policy then applies), but it is complete (placement is an atomic rename of
  a fsynced file), so it is indexed; indexed under another path already: `replace`
  indexes this one, `reject`/`ignore` keep the first and remove this copy, as the
  store itself would have;
* the file cannot be read or indexed: it is moved to <archive>/.quarantine/ and logged.

Every file is checked to its last byte (`check_dataset`) before its header is parsed,
in the order of the store path: the header parser relies on a well-formed dataset, and
a file cut short (storage.fsync off and a power loss) must be quarantined, not stop
the start.

`reconcile()` is the entry point for anything else that repairs (a `verify --repair`);
`ArchiveReconciler` is the start-up component.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import structlog
from pydicom.filereader import read_file_meta_info

from pacs_server.config import StorageConfig
from pacs_server.errors import DuplicateInstance, PacsError, UnreadableDataset
from pacs_server.index.records import InstanceRecord
from pacs_server.periodic import PeriodicTask
from pacs_server.services.archive import Catalog
from pacs_server.services.dataset_check import check_dataset
from pacs_server.services.ingest import (
    INDEXED_TAGS,
    build_record,
    dataset_offset,
    read_record,
)
from pacs_server.storage.filestore import FileStore

log = structlog.get_logger(__name__)


@dataclass
class ReconcileReport:
    """What one reconciliation found, intent by intent."""

    intents: int = 0        # open intents examined
    committed: int = 0      # file and row present: the crash came after the commit
    not_placed: int = 0     # no file: nothing to do
    indexed: int = 0        # a file without its row, indexed now
    removed: int = 0        # a second copy of an instance indexed elsewhere
    quarantined: int = 0    # unreadable or not indexable: moved to .quarantine

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


async def reconcile(files: FileStore, catalog: Catalog, cfg: StorageConfig,
                    stale_s: float | None = None, own: bool = True) -> ReconcileReport:
    """Settle the open placement intents of `files` against `catalog`: this process's
    own (`own`), and other processes' older than `stale_s` (None: none of theirs).

    Blocking file work runs in worker threads; index calls are awaited on the running
    loop. Safe to run again: each intent is removed once settled.
    """
    report = ReconcileReport()
    intents = await asyncio.to_thread(files.journal.pending) if own else []
    if stale_s is not None:
        intents += await asyncio.to_thread(files.journal.stale, stale_s)
    for intent, target in intents:
        report.intents += 1
        outcome = await _settle(files, catalog, cfg, target)
        setattr(report, outcome, getattr(report, outcome) + 1)
        await asyncio.to_thread(files.journal.close, intent)
    if report.intents:
        log.warning("storage.reconciled", **report.as_dict())
    return report


async def _settle(files: FileStore, catalog: Catalog, cfg: StorageConfig,
                  target: str) -> str:
    try:
        path = files.path(target) if target else None
    except PacsError:
        path = None                         # not a path inside the archive: not ours
    if path is None or not await asyncio.to_thread(path.is_file):
        return "not_placed"
    rel = PurePosixPath(target)
    try:
        record = await asyncio.to_thread(read_archived, path, rel, cfg.naming)
    except PacsError as exc:
        return await _quarantine(files, rel, str(exc))
    indexed = await catalog.lookup(record)
    if indexed == str(rel):
        return "committed"
    replace = cfg.duplicate_policy == "replace"
    if indexed is not None and not replace:
        await asyncio.to_thread(files.remove, rel)
        log.info("storage.reconcile_duplicate_removed", path=target, indexed=indexed)
        return "removed"
    try:
        old = await catalog.add(record, replace)
    except DuplicateInstance:
        if await catalog.lookup(record) == str(rel):
            # Another process settled this same intent meanwhile (its owner's start
            # and a sibling's stale sweep): the file is indexed where it is.
            return "committed"
        await asyncio.to_thread(files.remove, rel)
        return "removed"
    if old is not None and old != str(rel):
        await asyncio.to_thread(files.remove, PurePosixPath(old))
    log.info("storage.reconcile_indexed", path=target,
             sop_instance_uid=record.sop_instance_uid)
    return "indexed"


async def _quarantine(files: FileStore, rel: PurePosixPath, reason: str) -> str:
    moved = await asyncio.to_thread(files.quarantine, rel)
    log.warning("storage.quarantined", path=str(rel), to=str(moved), reason=reason)
    return "quarantined"


def read_archived(path: Path, rel: PurePosixPath, naming: str) -> InstanceRecord:
    """The index record of an archived Part-10 file (our File Meta, then the dataset,
    checked to its last byte before its header is parsed).

    Raises:
        UnreadableDataset, DatasetMismatch: the file cannot be indexed.
    """
    try:
        meta = read_file_meta_info(path)
        transfer_syntax = str(meta.TransferSyntaxUID)
    except Exception as exc:  # pydicom raises assorted errors on a damaged meta
        raise UnreadableDataset(f"file meta unreadable: {exc}") from None
    with open(path, "rb") as fh:
        offset = dataset_offset(fh)
        walked = check_dataset(fh, offset, transfer_syntax, INDEXED_TAGS)
        ds, header, header_syntax = read_record(fh, offset, transfer_syntax, walked)
        record = build_record(ds, header, header_syntax, transfer_syntax,
                              str(meta.get("MediaStorageSOPClassUID", "")),
                              str(meta.get("SourceApplicationEntityTitle", "")).strip(),
                              naming)
    record.rel_path = rel
    record.size = os.path.getsize(path)
    return record


def check_file(path: Path) -> None:
    """The structure check of the dataset in an archived Part-10 file."""
    meta = read_file_meta_info(path)
    with open(path, "rb") as fh:
        check_dataset(fh, dataset_offset(fh), str(meta.TransferSyntaxUID))


class ArchiveReconciler:
    """Start-up component: reconcile before the listener accepts anything."""

    name = "reconcile"

    def __init__(self, files: FileStore, catalog: Catalog, cfg: StorageConfig,
                 stale_s: float | None = None) -> None:
        self._files = files
        self._catalog = catalog
        self._cfg = cfg
        self._stale_s = stale_s
        self.report: ReconcileReport | None = None

    async def start(self) -> None:
        self.report = await reconcile(self._files, self._catalog, self._cfg, self._stale_s)

    async def close(self) -> None:
        return None


class StaleIntentSweeper(PeriodicTask):
    """Every `interval_s`, settle other processes' intents older than `stale_s`: those
    of a node that died and has not come back (a singleton job, index/leases.py)."""

    name = "stale-intents"

    def __init__(self, files: FileStore, catalog: Catalog, cfg: StorageConfig,
                 stale_s: float, interval_s: float = 60.0) -> None:
        super().__init__(interval_s)
        self._files, self._catalog, self._stale_s = files, catalog, stale_s
        self._cfg = cfg

    def reconfigure(self, cfg: StorageConfig) -> None:
        self._cfg = cfg

    async def tick(self) -> None:
        try:
            await reconcile(self._files, self._catalog, self._cfg, self._stale_s, own=False)
        except Exception as exc:  # the index or the archive is down: the next run retries
            log.warning("storage.stale_intents_failed", error=str(exc))
