"""Storage Commitment (PS3.4 Annex J): record a request, check its instances, keep track
of the delivery of its report. Knows nothing about associations.

A reference is committed when the instance is indexed under the SOP class the requester
named and its file is intact: present, of the size the index recorded and holding that
SOP Instance UID in its File Meta (the index keeps no digest). Otherwise it fails with a
Failure Reason of PS3.3 C.14.1.1:

    0x0112 No such object instance    not in the index
    0x0122 Referenced SOP Class not supported   not indexed, and not a class we accept
    0x0119 Class / Instance conflict  indexed under another SOP Class UID
    0x0110 Processing failure         indexed, but the file is missing, truncated or not it
    0x0131 Duplicate transaction UID  the Transaction UID was used by an earlier request

The outcome is computed once and kept, so a report sent again after a failed delivery
says the same thing.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info

from pacs_server.config import CommitmentConfig
from pacs_server.errors import DatasetMismatch, InvalidArgument
from pacs_server.index.commitment import (
    ABANDONED,
    DELIVERED,
    CommitmentRepository,
    StoredCommitment,
)
from pacs_server.index.repository import IndexRepository, StoredRef
from pacs_server.storage.filestore import FileStore
from pacs_server.storage.layout import check_uid

log = structlog.get_logger(__name__)

PROCESSING_FAILURE = 0x0110
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
SOP_CLASS_NOT_SUPPORTED = 0x0122
DUPLICATE_TRANSACTION_UID = 0x0131

ALL_COMMITTED = 1        # Event Type ID: Storage Commitment Request Successful
SOME_FAILED = 2          # Event Type ID: Storage Commitment Request Complete - Failures Exist


@dataclass(frozen=True)
class CommitmentRequest:
    """A validated N-ACTION Request Storage Commitment."""

    transaction_uid: str
    calling_ae: str
    refs: list[tuple[str, str]]          # (SOP Class UID, SOP Instance UID) as requested


@dataclass
class CommitmentReport:
    """What the N-EVENT-REPORT says about one request."""

    pk: int
    transaction_uid: str
    calling_ae: str
    attempts: int
    committed: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str, int]] = field(default_factory=list)

    @property
    def event_type(self) -> int:
        return SOME_FAILED if self.failed else ALL_COMMITTED


def build_request(transaction_uid: str, calling_ae: str,
                  refs: Iterable[tuple[int, str, str]]) -> CommitmentRequest:
    """Validate the request's UIDs; `refs` holds (item number, class UID, instance UID).

    Raises:
        InvalidArgument: one line naming the attribute (and sequence item) at fault.
    """
    try:
        uid = check_uid("Transaction UID (0008,1195)", transaction_uid)
        checked = [(check_uid(f"Referenced SOP Class UID of item {n}", cls),
                    check_uid(f"Referenced SOP Instance UID of item {n}", inst))
                   for n, cls, inst in refs]
    except DatasetMismatch as exc:
        raise InvalidArgument(str(exc)) from None
    if not checked:
        raise InvalidArgument("Referenced SOP Sequence (0008,1199) is empty")
    return CommitmentRequest(uid, calling_ae.strip(), checked)


class CommitmentService:
    """The use cases of the Storage Commitment SCP.

    Args:
        repo: the pending commitments.
        index: the archive index (which instances are stored, where, how big).
        files: the archive's files.
        accepted_classes: the storage SOP classes the server accepts.
        cfg: the `commitment` section (retries); `reconfigure` swaps it.
    """

    def __init__(self, repo: CommitmentRepository, index: IndexRepository, files: FileStore,
                 accepted_classes: Iterable[str], cfg: CommitmentConfig,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._repo = repo
        self._index = index
        self._files = files
        self._accepted = frozenset(accepted_classes)
        self.cfg = cfg
        self._clock = clock

    def reconfigure(self, cfg: CommitmentConfig) -> None:
        self.cfg = cfg

    async def record(self, req: CommitmentRequest) -> int:
        """Keep the request durably (before the N-ACTION-RSP Success); returns its id."""
        pk, duplicate = await self._repo.record(req.transaction_uid, req.calling_ae,
                                                req.refs, self._clock())
        log.info("commitment.requested", commitment=pk, transaction_uid=req.transaction_uid,
                 calling_ae=req.calling_ae, references=len(req.refs), duplicate=duplicate)
        if duplicate:
            await self._repo.save_failures(
                pk, {inst: DUPLICATE_TRANSACTION_UID for _, inst in req.refs})
        return pk

    async def report(self, pk: int) -> CommitmentReport | None:
        """The report of a pending commitment (checking its instances the first time);
        None once it was delivered or abandoned."""
        row = await self._repo.get(pk)
        if row is None or row.state in (DELIVERED, ABANDONED):
            return None
        failures = row.failures
        if failures is None:
            failures = await self._check(row.refs)
            await self._repo.save_failures(pk, failures)
        out = CommitmentReport(pk, row.transaction_uid, row.calling_ae, row.attempts)
        for cls, inst in row.refs:
            if inst in failures:
                out.failed.append((cls, inst, failures[inst]))
            else:
                out.committed.append((cls, inst))
        return out

    async def _check(self, refs: list[tuple[str, str]]) -> dict[str, int]:
        indexed = {r.sop_instance_uid: r for r in await self._index.refs(
            dict.fromkeys(inst for _, inst in refs))}
        failures: dict[str, int] = {}
        to_verify: list[StoredRef] = []
        for cls, inst in refs:
            stored = indexed.get(inst)
            if stored is None:
                failures[inst] = (NO_SUCH_OBJECT_INSTANCE if cls in self._accepted
                                  else SOP_CLASS_NOT_SUPPORTED)
            elif stored.sop_class_uid != cls:
                failures[inst] = CLASS_INSTANCE_CONFLICT
            else:
                to_verify.append(stored)
        broken = await asyncio.to_thread(self._broken_files, to_verify)
        failures.update({uid: PROCESSING_FAILURE for uid in broken})
        return failures

    def _broken_files(self, refs: list[StoredRef]) -> list[str]:
        """UIDs of indexed instances whose file is not intact (runs in a worker thread)."""
        broken = []
        for ref in refs:
            problem = _file_problem(self._files.path(ref.path), ref)
            if problem:
                log.warning("commitment.file_not_intact", sop_instance_uid=ref.sop_instance_uid,
                            path=ref.path, problem=problem)
                broken.append(ref.sop_instance_uid)
        return broken

    # ------------------------------------------------------------------ delivery
    async def hold(self, pk: int, owner: str, seconds: float) -> None:
        """Keep every other process's runner off this commitment for `seconds`: `owner`
        is sending it on the requesting association."""
        await self._repo.hold(pk, owner, self._clock() + timedelta(seconds=seconds))

    async def unhold(self, pk: int) -> None:
        await self._repo.unhold(pk, self._clock())

    async def release_holds(self, owner: str) -> None:
        await self._repo.release_holds(owner, self._clock())

    async def due(self) -> list[StoredCommitment]:
        return await self._repo.due(self._clock())

    async def next_due(self) -> datetime | None:
        return await self._repo.next_due()

    async def delivered(self, report: CommitmentReport, attempts: int, via: str) -> None:
        """The requester answered the N-EVENT-REPORT with Success: never send it again."""
        await self._repo.finish(report.pk, DELIVERED, self._clock(), attempts)
        log.info("commitment.delivered", commitment=report.pk,
                 transaction_uid=report.transaction_uid, calling_ae=report.calling_ae,
                 via=via, event_type=report.event_type, committed=len(report.committed),
                 failed=len(report.failed), attempts=attempts)

    async def not_delivered(self, report: CommitmentReport, attempts: int, error: str) -> bool:
        """Schedule the next attempt with exponential back-off, or abandon the report
        once `give_up_after` has passed. Returns True when abandoned."""
        now = self._clock()
        cfg = self.cfg
        delay = min(cfg.retry_interval * 2 ** max(attempts - 1, 0), cfg.max_retry_interval)
        row = await self._repo.get(report.pk)
        requested = row.requested_at if row is not None else now
        if cfg.give_up_after > 0 and (now - requested).total_seconds() >= cfg.give_up_after:
            await self._repo.finish(report.pk, ABANDONED, now, attempts, error)
            log.error("commitment.abandoned", commitment=report.pk,
                      transaction_uid=report.transaction_uid, calling_ae=report.calling_ae,
                      attempts=attempts, error=error)
            return True
        await self._repo.retry_later(report.pk, attempts, now + timedelta(seconds=delay), error)
        log.warning("commitment.retry_later", commitment=report.pk,
                    transaction_uid=report.transaction_uid, calling_ae=report.calling_ae,
                    attempts=attempts, retry_in_s=delay, error=error)
        return False

    async def list(self, state: str | None = None) -> list[StoredCommitment]:
        return await self._repo.list(state)


def _file_problem(path: Path, ref: StoredRef) -> str:
    """Why the archived file of `ref` is not intact, or "" when it is."""
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        return f"cannot stat the file: {exc.strerror or exc}"
    if size != ref.size:
        return f"size {size} differs from the indexed {ref.size}"
    try:
        meta = read_file_meta_info(path)
    except (OSError, InvalidDicomError, EOFError, ValueError) as exc:
        return f"File Meta unreadable: {exc}"
    if str(meta.get("MediaStorageSOPInstanceUID", "")).rstrip("\0 ") != ref.sop_instance_uid:
        return "File Meta names another SOP Instance UID"
    return ""
