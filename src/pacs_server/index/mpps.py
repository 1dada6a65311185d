"""The performed procedure steps (MPPS) in the index: table and repository.

A row keeps the step's whole attribute set (`dataset`, Explicit VR Little Endian) and,
as columns, what the admin command lists by and what links the step to its worklist
item: the first item of the Scheduled Step Attributes Sequence (Study Instance UID,
Accession Number, Scheduled Procedure Step ID).

Writes take the lock before they read (`engine.immediate`: BEGIN IMMEDIATE on SQLite,
SELECT ... FOR UPDATE on PostgreSQL), so a read-modify-write never works on a stale
row: two N-SETs of one step, from two workers or two nodes, take turns, and the second
reads what the first committed (a final step then refuses it, PS3.4 F.7.2.2.3).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime

from sqlalchemy import DateTime, Integer, LargeBinary, String, Text, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Mapped, mapped_column

from pacs_server.errors import IndexUnavailable, InstanceExists, NoSuchInstance
from pacs_server.index.engine import immediate
from pacs_server.index.models import Base


class PerformedStep(Base):
    __tablename__ = "mpps"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), default="", index=True)
    accession_number: Mapped[str] = mapped_column(String(64), default="", index=True)
    sps_id: Mapped[str] = mapped_column(String(64), default="")
    pps_id: Mapped[str] = mapped_column(String(64), default="")
    patient_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    patient_name: Mapped[str] = mapped_column(Text, default="")
    station_ae: Mapped[str] = mapped_column(String(16), default="")
    modality: Mapped[str] = mapped_column(String(16), default="")
    start_date: Mapped[str] = mapped_column(String(8), default="", index=True)
    start_time: Mapped[str] = mapped_column(String(16), default="")
    end_date: Mapped[str] = mapped_column(String(8), default="")
    end_time: Mapped[str] = mapped_column(String(16), default="")
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    dataset: Mapped[bytes] = mapped_column(LargeBinary)


@dataclass(frozen=True)
class StepRecord:
    """One performed procedure step as the index keeps it."""

    sop_instance_uid: str
    status: str
    dataset: bytes
    study_instance_uid: str = ""
    accession_number: str = ""
    sps_id: str = ""
    pps_id: str = ""
    patient_id: str = ""
    patient_name: str = ""
    station_ae: str = ""
    modality: str = ""
    start_date: str = ""
    start_time: str = ""
    end_date: str = ""
    end_time: str = ""
    calling_ae: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None


_COLUMNS = tuple(f.name for f in fields(StepRecord))
# Set on update: everything but the identity, the creator and the creation time.
_UPDATED = tuple(c for c in _COLUMNS if c not in ("sop_instance_uid", "calling_ae",
                                                  "created_at"))


def _record(row: object) -> StepRecord:
    return StepRecord(**{c: getattr(row, c) for c in _COLUMNS})


class MppsRepository:
    """SQL of the `mpps` table, on the index's engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._writes = immediate(engine)

    async def create(self, record: StepRecord) -> StepRecord:
        """Insert a new step; InstanceExists if its SOP Instance UID is taken."""
        now = datetime.now(UTC)
        record = replace(record, created_at=now, updated_at=now)
        try:
            async with self._writes.begin() as conn:
                await conn.execute(insert(PerformedStep).values(
                    **{c: getattr(record, c) for c in _COLUMNS}))
        except IntegrityError:
            raise InstanceExists(
                f"SOP Instance {record.sop_instance_uid} already exists") from None
        except DBAPIError as exc:
            raise _unavailable(exc) from None
        return record

    async def update(self, sop_instance_uid: str,
                     change: Callable[[StepRecord], StepRecord]) -> StepRecord:
        """Apply `change` to the stored step in one transaction and store its result.

        `change` may raise to refuse the update (nothing is written). Raises
        NoSuchInstance for an unknown UID.
        """
        now = datetime.now(UTC)
        where = PerformedStep.sop_instance_uid == sop_instance_uid
        try:
            async with self._writes.begin() as conn:
                row = (await conn.execute(select(PerformedStep).where(where)
                                          .with_for_update())).first()
                if row is None:
                    raise NoSuchInstance(f"no procedure step {sop_instance_uid}")
                new = replace(change(_record(row)), updated_at=now)
                await conn.execute(update(PerformedStep).where(where).values(
                    **{c: getattr(new, c) for c in _UPDATED}))
        except DBAPIError as exc:
            raise _unavailable(exc) from None
        return new

    async def get(self, sop_instance_uid: str) -> StepRecord | None:
        try:
            async with self._engine.connect() as conn:
                row = (await conn.execute(select(PerformedStep).where(
                    PerformedStep.sop_instance_uid == sop_instance_uid))).first()
        except DBAPIError as exc:
            raise _unavailable(exc) from None
        return _record(row) if row is not None else None

    async def recent(self, status: str | None = None, limit: int = 1000) -> list[StepRecord]:
        """The newest steps first, optionally only those with `status`."""
        query = select(PerformedStep).order_by(PerformedStep.created_at.desc(),
                                               PerformedStep.pk.desc()).limit(limit)
        if status is not None:
            query = query.where(PerformedStep.status == status)
        try:
            async with self._engine.connect() as conn:
                return [_record(row) for row in await conn.execute(query)]
        except DBAPIError as exc:
            raise _unavailable(exc) from None


def _unavailable(exc: DBAPIError) -> IndexUnavailable:
    reason = str(exc.orig if exc.orig is not None else exc).strip().splitlines()
    return IndexUnavailable(f"index: {reason[0] if reason else type(exc).__name__}")
