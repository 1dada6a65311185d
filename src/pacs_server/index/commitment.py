"""Storage Commitment requests kept in the index until their N-EVENT-REPORT is delivered.

One row per N-ACTION (PS3.4 J.3.2): who asked, the references, and once checked the
failure reason of each reference that failed. A row is written before the N-ACTION-RSP
Success goes out, so an acknowledged request survives a restart; it is marked
`delivered` only after the requester answered the N-EVENT-REPORT with Success.

Writes are single statements (or write-first transactions), so on SQLite they never
upgrade a read snapshot into a write lock next to the index writer (index/repository.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Integer, String, Text, func, insert, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Mapped, mapped_column

from pacs_server.errors import IndexUnavailable
from pacs_server.index.models import Base

PENDING = "pending"
DELIVERED = "delivered"
ABANDONED = "abandoned"


class CommitmentRow(Base):
    __tablename__ = "commitments"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    transaction_uid: Mapped[str] = mapped_column(String(64), index=True)
    calling_ae: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), default=PENDING, index=True)
    # JSON: [[sop_class_uid, sop_instance_uid], ...] as requested.
    refs: Mapped[str] = mapped_column(Text)
    # JSON: {sop_instance_uid: failure_reason}; NULL until the instances were checked,
    # so every attempt sends the same report.
    failures: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    requested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                         nullable=True)
    last_error: Mapped[str] = mapped_column(Text, default="")
    # The process (identity.py) reporting it on the requesting association right now;
    # the runners of the others leave it alone until next_attempt_at (migration 0008).
    held_by: Mapped[str | None] = mapped_column(String(128), nullable=True, default=None)


@dataclass
class StoredCommitment:
    """A commitment request as the index keeps it."""

    pk: int
    transaction_uid: str
    calling_ae: str
    state: str
    refs: list[tuple[str, str]]
    failures: dict[str, int] | None
    attempts: int
    requested_at: datetime
    next_attempt_at: datetime
    finished_at: datetime | None
    last_error: str


def _row(r: Any) -> StoredCommitment:
    """A row of `select(CommitmentRow)` (a mapping of its columns) as a plain record."""
    return StoredCommitment(
        pk=r["pk"], transaction_uid=r["transaction_uid"], calling_ae=r["calling_ae"],
        state=r["state"], refs=[(c, i) for c, i in json.loads(r["refs"])],
        failures=json.loads(r["failures"]) if r["failures"] is not None else None,
        attempts=r["attempts"], requested_at=_aware(r["requested_at"]),
        next_attempt_at=_aware(r["next_attempt_at"]),
        finished_at=_aware(r["finished_at"]) if r["finished_at"] else None,
        last_error=r["last_error"])


def _aware(value: datetime) -> datetime:
    # SQLite hands timezone-aware columns back naive; they were written in UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class CommitmentRepository:
    """All SQL of the pending commitments (reads and writes on the readers' engine)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def record(self, transaction_uid: str, calling_ae: str, refs: list[tuple[str, str]],
                     now: datetime) -> tuple[int, bool]:
        """Keep a new request; returns (pk, whether the Transaction UID was already used).

        The insert comes first, so the transaction holds the write lock before it reads.

        Raises:
            IndexUnavailable: the row could not be committed (the N-ACTION must fail).
        """
        try:
            async with self._engine.begin() as conn:
                pk = (await conn.execute(insert(CommitmentRow).values(
                    transaction_uid=transaction_uid, calling_ae=calling_ae, state=PENDING,
                    refs=json.dumps(refs), attempts=0, requested_at=now,
                    next_attempt_at=now, last_error="").returning(CommitmentRow.pk))).scalar_one()
                earlier = (await conn.execute(select(func.count()).select_from(
                    CommitmentRow).where(CommitmentRow.transaction_uid == transaction_uid,
                                         CommitmentRow.pk != pk))).scalar_one()
        except DBAPIError as exc:
            raise IndexUnavailable(f"commitment request not recorded: {exc.orig or exc}") from None
        return int(pk), bool(earlier)

    async def get(self, pk: int) -> StoredCommitment | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(CommitmentRow).where(
                CommitmentRow.pk == pk))).mappings().first()
        return _row(row) if row else None

    async def due(self, now: datetime, limit: int = 100) -> list[StoredCommitment]:
        """Pending commitments whose next attempt is due, oldest first."""
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(CommitmentRow).where(
                CommitmentRow.state == PENDING, CommitmentRow.next_attempt_at <= now).order_by(
                CommitmentRow.next_attempt_at, CommitmentRow.pk).limit(limit))).mappings()
            return [_row(r) for r in rows]

    async def next_due(self) -> datetime | None:
        """When the earliest pending commitment is due, if any is pending."""
        async with self._engine.connect() as conn:
            value = (await conn.execute(select(func.min(CommitmentRow.next_attempt_at)).where(
                CommitmentRow.state == PENDING))).scalar()
        return _aware(value) if value is not None else None

    async def list(self, state: str | None = None) -> list[StoredCommitment]:
        """Every commitment (or those in `state`), newest first."""
        query = select(CommitmentRow).order_by(CommitmentRow.pk.desc())
        if state is not None:
            query = query.where(CommitmentRow.state == state)
        async with self._engine.connect() as conn:
            return [_row(r) for r in (await conn.execute(query)).mappings()]

    async def save_failures(self, pk: int, failures: dict[str, int]) -> None:
        """Keep the outcome of the instance checks (once: later attempts reuse it)."""
        await self._update(pk, failures=json.dumps(failures))

    async def hold(self, pk: int, owner: str, until: datetime) -> None:
        """`owner` sends it on the requesting association: not due before `until`."""
        await self._update(pk, next_attempt_at=until, held_by=owner)

    async def unhold(self, pk: int, now: datetime) -> None:
        """Due at once again (the report did not go on the requesting association)."""
        await self._update(pk, next_attempt_at=now, held_by=None)

    async def release_holds(self, owner: str, now: datetime) -> None:
        """At the start of `owner`: what it held when it stopped is due at once."""
        async with self._engine.begin() as conn:
            await conn.execute(update(CommitmentRow).where(
                CommitmentRow.held_by == owner, CommitmentRow.state == PENDING).values(
                next_attempt_at=now, held_by=None))

    async def retry_later(self, pk: int, attempts: int, at: datetime, error: str) -> None:
        await self._update(pk, attempts=attempts, next_attempt_at=at, last_error=error[:1000])

    async def finish(self, pk: int, state: str, now: datetime, attempts: int,
                     error: str = "") -> None:
        """Mark a commitment `delivered` or `abandoned`; it is never sent again."""
        await self._update(pk, state=state, finished_at=now, attempts=attempts,
                           last_error=error[:1000])

    async def _update(self, pk: int, **values: object) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(update(CommitmentRow).where(CommitmentRow.pk == pk).values(
                **values))
