"""Worklist items in the index: the table and `WorklistRepository` (all worklist SQL).

One row is one scheduled procedure step (PS3.4 K.6.1: each C-FIND response is one
Scheduled Procedure Step Sequence item with its requested procedure, imaging service
request and patient). `dataset` keeps the item's full attribute set as DICOM JSON
(PS3.18 F.2), so any return key can be answered and no character set is involved; the
other columns hold the matching keys so that SQL can narrow a query with an index.
Person names are stored folded (`index/text.name_key`) for case-insensitive matching.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    DateTime,
    Index,
    Integer,
    String,
    Text,
    and_,
    delete,
    func,
    insert,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Mapped, mapped_column

from pacs_server.errors import IndexUnavailable
from pacs_server.index.attributes import Kind
from pacs_server.index.engine import immediate
from pacs_server.index.matching import sql_condition
from pacs_server.index.models import Base

FINAL_STATUSES = ("COMPLETED", "DISCONTINUED")
STEP_STATUSES = ("SCHEDULED", "STARTED", *FINAL_STATUSES)


class WorklistItem(Base):
    __tablename__ = "worklist_items"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    patient_name: Mapped[str] = mapped_column(Text, default="")
    patient_name_norm: Mapped[str] = mapped_column(Text, default="", index=True)
    accession_number: Mapped[str] = mapped_column(String(64), default="", index=True)
    requested_procedure_id: Mapped[str] = mapped_column(String(16), default="")
    study_instance_uid: Mapped[str] = mapped_column(String(64), default="", index=True)
    referring_physician_norm: Mapped[str] = mapped_column(Text, default="")
    # The scheduled step (the one Scheduled Procedure Step Sequence item).
    modality: Mapped[str] = mapped_column(String(16), default="")
    station_ae: Mapped[str] = mapped_column(String(128), default="")   # may be "A\\B"
    station_name: Mapped[str] = mapped_column(String(128), default="")
    start_date: Mapped[str] = mapped_column(String(8), default="")
    start_time: Mapped[str] = mapped_column(String(16), default="")
    performing_physician_norm: Mapped[str] = mapped_column(Text, default="")
    sps_id: Mapped[str] = mapped_column(String(16), default="", index=True)
    sps_status: Mapped[str] = mapped_column(String(16), default="")
    dataset: Mapped[str] = mapped_column(Text)            # DICOM JSON of the whole item
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                         nullable=True)


# The modality's query: its own AE title and today (PS3.4 K.6.1.2.2, the common case).
Index("ix_worklist_date_station", WorklistItem.start_date, WorklistItem.station_ae)
Index("ix_worklist_station_date", WorklistItem.station_ae, WorklistItem.start_date)
Index("ix_worklist_status_finished", WorklistItem.sps_status, WorklistItem.finished_at)

COLUMNS = ("patient_id", "patient_name", "patient_name_norm", "accession_number",
           "requested_procedure_id", "study_instance_uid", "referring_physician_norm",
           "modality", "station_ae", "station_name", "start_date", "start_time",
           "performing_physician_norm", "sps_id", "sps_status")

@dataclass(frozen=True)
class _Key:
    """Where SQL can narrow on a matching key: its column, match kind (index/matching.py's
    kinds) and, for a Person Name, its case-folded column."""

    column: Any
    kind: Kind
    norm: Any = None


# Matching key → where SQL can narrow on it.
_TOP: dict[str, _Key] = {
    "PatientID": _Key(WorklistItem.patient_id, "str"),
    "PatientName": _Key(WorklistItem.patient_name, "pn",
                        WorklistItem.patient_name_norm),
    "AccessionNumber": _Key(WorklistItem.accession_number, "str"),
    "RequestedProcedureID": _Key(WorklistItem.requested_procedure_id, "str"),
    "StudyInstanceUID": _Key(WorklistItem.study_instance_uid, "uid"),
    "ReferringPhysicianName": _Key(WorklistItem.referring_physician_norm, "pn",
                                   WorklistItem.referring_physician_norm),
}
_STEP: dict[str, _Key] = {
    "Modality": _Key(WorklistItem.modality, "str"),
    "ScheduledStationAETitle": _Key(WorklistItem.station_ae, "multi"),
    "ScheduledStationName": _Key(WorklistItem.station_name, "multi"),
    "ScheduledProcedureStepStartDate": _Key(WorklistItem.start_date, "date"),
    "ScheduledPerformingPhysicianName": _Key(WorklistItem.performing_physician_norm, "pn",
                                             WorklistItem.performing_physician_norm),
    "ScheduledProcedureStepID": _Key(WorklistItem.sps_id, "str"),
    "ScheduledProcedureStepStatus": _Key(WorklistItem.sps_status, "str"),
}


@dataclass(frozen=True)
class WorklistRow:
    """A stored item: its id, the matching columns and the DICOM JSON."""

    pk: int
    columns: Mapping[str, str]
    dataset: str
    created_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True)
class WorklistFilter:
    """What SQL may narrow on: query values by keyword (top level and step level).

    Values are C-FIND matching values; `include_final` offers COMPLETED/DISCONTINUED steps.
    """

    top: Mapping[str, str]
    step: Mapping[str, str]
    include_final: bool = False


def narrowing(flt: WorklistFilter) -> list[ColumnElement[bool]]:
    """SQL superset conditions for a filter; the caller decides each row exactly."""
    conds: list[ColumnElement[bool]] = []
    for table, values in ((_TOP, flt.top), (_STEP, flt.step)):
        for keyword, value in values.items():
            attr = table.get(keyword)
            if attr is None:
                continue
            if attr.kind == "multi":
                cond = _multi_condition(attr, value)
            else:
                cond = sql_condition(attr.column, attr.kind, value, attr.norm)
            if cond is not None:
                conds.append(cond)
    if not flt.include_final:
        conds.append(WorklistItem.sps_status.not_in(FINAL_STATUSES))
    return conds


def _multi_condition(attr: _Key, value: str) -> ColumnElement[bool] | None:
    # A station may be scheduled as several AE titles ("AA32\AA33"): equality serves
    # the single-valued rows with the index, and multi-valued rows go to Python.
    cond = sql_condition(attr.column, "str", value)
    if cond is None:
        return None
    return or_(cond, attr.column.contains("\\", autoescape=True))


class WorklistRepository:
    """Worklist items: added, listed and removed by the admin command, read per C-FIND.

    Every call is its own transaction on the index's reading engine; nothing is cached,
    so a running server sees an item as soon as the command has committed it.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._writes = immediate(engine)

    async def add(self, items: list[tuple[Mapping[str, str], str]]) -> list[int]:
        """Store (columns, DICOM JSON) pairs in one transaction; returns their ids."""
        now = datetime.now(UTC)
        rows = [{**{c: columns.get(c, "") for c in COLUMNS}, "dataset": dataset,
                 "created_at": now,
                 "finished_at": now if columns.get("sps_status") in FINAL_STATUSES else None}
                for columns, dataset in items]
        if not rows:
            return []
        stmt = insert(WorklistItem).returning(WorklistItem.pk, sort_by_parameter_order=True)
        async with self._engine.begin() as conn:
            result = await conn.execute(stmt, rows)
            return [int(pk) for pk in result.scalars().all()]

    async def get(self, pk: int) -> WorklistRow | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(WorklistItem.__table__)
                                      .where(WorklistItem.pk == pk))).mappings().first()
        return _row(row) if row is not None else None

    async def remove(self, pk: int) -> bool:
        async with self._engine.begin() as conn:
            result = await conn.execute(delete(WorklistItem).where(WorklistItem.pk == pk))
        return bool(result.rowcount)

    async def rows(self, flt: WorklistFilter, batch: int = 200
                   ) -> AsyncGenerator[list[WorklistRow], None]:
        """Rows that may match, in batches, ordered by start date and time."""
        stmt = (select(WorklistItem.__table__).where(and_(true(), *narrowing(flt)))
                .order_by(WorklistItem.start_date, WorklistItem.start_time, WorklistItem.pk))
        async with self._engine.connect() as conn:
            result = await conn.stream(stmt)
            try:
                async for part in result.mappings().partitions(batch):
                    yield [_row(r) for r in part]
            finally:
                await result.close()

    async def set_step_status(self, study_instance_uid: str, accession_number: str,
                              sps_id: str, status: str) -> int:
        """Set ScheduledProcedureStepStatus (0040,0020) of the matching items' step.

        Matches on the non-empty ones of the three keys (none given: nothing matches).
        COMPLETED and DISCONTINUED record when, for `purge_finished`. STARTED never
        reopens a finished item: the N-CREATE that started a step and the N-SET that
        ended it may reach two workers or nodes, whose updates then land in either
        order. The items are read and written under the lock (`engine.immediate`), so
        two processes' updates take turns. Returns the number of items updated.
        """
        if status not in STEP_STATUSES:
            raise ValueError(f"unknown step status {status!r}")
        keys = {"study_instance_uid": study_instance_uid,
                "accession_number": accession_number, "sps_id": sps_id}
        conds = [getattr(WorklistItem, c) == v for c, v in keys.items() if v]
        if not conds:
            return 0
        finished = datetime.now(UTC) if status in FINAL_STATUSES else None
        if status == "STARTED":
            conds.append(WorklistItem.sps_status.not_in(FINAL_STATUSES))
        updated = 0
        try:
            async with self._writes.begin() as conn:
                found = (await conn.execute(select(WorklistItem.pk, WorklistItem.dataset)
                                            .where(and_(*conds)).with_for_update())).all()
                for pk, dataset in found:
                    await conn.execute(update(WorklistItem).where(WorklistItem.pk == pk)
                                       .values(sps_status=status, finished_at=finished,
                                               dataset=with_step_status(dataset, status)))
                    updated += 1
        except DBAPIError as exc:
            # A PacsError, so that MPPS logs it: the step itself is already stored.
            reason = str(exc.orig or exc).strip().splitlines()
            raise IndexUnavailable(f"worklist: {reason[0] if reason else exc}") from None
        return updated

    async def purge_finished(self, before: datetime) -> int:
        """Remove COMPLETED/DISCONTINUED items finished before `before` (retention)."""
        async with self._engine.begin() as conn:
            result = await conn.execute(delete(WorklistItem).where(
                WorklistItem.sps_status.in_(FINAL_STATUSES),
                WorklistItem.finished_at < before))
        return int(result.rowcount or 0)

    async def count(self) -> int:
        async with self._engine.connect() as conn:
            return int((await conn.execute(select(func.count(WorklistItem.pk)))).scalar_one())


def with_step_status(dataset_json: str, status: str) -> str:
    """The item's DICOM JSON with (0040,0020) of its step set to `status`."""
    data = json.loads(dataset_json)
    sps = data.setdefault("00400100", {"vr": "SQ", "Value": [{}]})
    items = sps.setdefault("Value", [{}]) or [{}]
    sps["Value"] = items
    for item in items:
        item["00400020"] = {"vr": "CS", "Value": [status]}
    return json.dumps(data, ensure_ascii=False)


def _row(row: Any) -> WorklistRow:
    return WorklistRow(pk=row["pk"], columns={c: row[c] or "" for c in COLUMNS},
                       dataset=row["dataset"], created_at=row["created_at"],
                       finished_at=row["finished_at"])
