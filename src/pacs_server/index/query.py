"""Streaming reads for C-FIND and retrieve: joined rows down to the query level."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Select, select
from sqlalchemy.ext.asyncio import AsyncEngine

from pacs_server.index.matching import LEVEL_MODEL, LEVELS
from pacs_server.index.models import Instance, Patient, Series, Study

_PARENT_JOIN = {
    "STUDY": (Study.patient_pk, Patient.pk),
    "SERIES": (Series.study_pk, Study.pk),
    "IMAGE": (Instance.series_pk, Series.pk),
}
_PREFIX = {"PATIENT": "p", "STUDY": "st", "SERIES": "se", "IMAGE": "i"}


def build_select(level: str, conditions: Sequence[ColumnElement[bool]]) -> Select[Any]:
    """SELECT every column of each table from PATIENT down to `level` (headers only at
    `level`), joined, filtered, in insertion order."""
    depth = LEVELS.index(level)
    columns = []
    for lvl in LEVELS[:depth + 1]:
        model = LEVEL_MODEL[lvl]
        for col in model.__table__.columns:
            if col.name in ("header", "header_syntax") and lvl != level:
                continue
            columns.append(col.label(f"{_PREFIX[lvl]}_{col.name}"))
    stmt = select(*columns).select_from(LEVEL_MODEL[level])
    for lvl in reversed(LEVELS[1:depth + 1]):
        child_fk, parent_pk = _PARENT_JOIN[lvl]
        stmt = stmt.join(parent_pk.class_, child_fk == parent_pk)
    for cond in conditions:
        stmt = stmt.where(cond)
    return stmt.order_by(LEVEL_MODEL[level].pk)


def column_key(level: str, column: str) -> str:
    """The label under which `build_select` returns a column."""
    return f"{_PREFIX[level]}_{column}"


async def stream_rows(engine: AsyncEngine, level: str,
                      conditions: Sequence[ColumnElement[bool]],
                      batch: int = 200) -> AsyncIterator[list[dict[str, Any]]]:
    """Yield matching rows in batches, holding one batch in memory at a time."""
    stmt = build_select(level, conditions)
    async with engine.connect() as conn:
        result = await conn.stream(stmt.execution_options(yield_per=batch))
        async for partition in result.mappings().partitions(batch):
            yield [dict(row) for row in partition]
