"""Read-only views of the whole archive for operators: every indexed file (verify), the
statistics of `pacsctl stats`, and the trivial query of /healthz. Beside the read path
of index/reader.py; built by IndexComponent on the readers' engine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import Text, cast, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from pacs_server.index.models import Instance, Series


class Inventory:
    """Whole-archive reads for operators (verify, stats, health)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def ping(self) -> None:
        """A trivial query; raises whatever the database raises."""
        async with self._engine.connect() as conn:
            await conn.execute(text("SELECT 1 FROM instances LIMIT 1"))

    async def indexed_files(self, batch: int = 1000
                            ) -> AsyncIterator[list[tuple[str, str, int]]]:
        """(SOP Instance UID, relative path, size) of every indexed instance, in batches."""
        stmt = (select(Instance.sop_instance_uid, Instance.path, Instance.size)
                .order_by(Instance.pk))
        async with self._engine.connect() as conn:
            result = await conn.stream(stmt.execution_options(yield_per=batch))
            async for part in result.partitions(batch):
                yield [(str(r[0]), str(r[1]), int(r[2])) for r in part]

    async def statistics(self, top: int = 10) -> dict[str, Any]:
        """Bytes and instances per modality, per day received, and the top sending AEs."""
        return await _statistics(self._engine, top)


async def _statistics(engine: AsyncEngine, top: int) -> dict[str, Any]:
    day = func.substr(cast(Instance.received_at, Text), 1, 10)
    async with engine.connect() as conn:
        per_modality = (await conn.execute(
            select(Series.modality, func.count(), func.coalesce(func.sum(Instance.size), 0))
            .join(Instance, Instance.series_pk == Series.pk)
            .group_by(Series.modality).order_by(Series.modality))).all()
        per_day = (await conn.execute(
            select(day, func.count(), func.coalesce(func.sum(Instance.size), 0))
            .group_by(day).order_by(day.desc()).limit(31))).all()
        senders = (await conn.execute(
            select(Instance.source_ae, func.count(), func.coalesce(func.sum(Instance.size), 0))
            .group_by(Instance.source_ae).order_by(func.count().desc()).limit(top))).all()
    return {
        "by_modality": [{"modality": m or "", "instances": int(n), "bytes": int(b)}
                        for m, n, b in per_modality],
        "by_day": [{"day": str(d), "instances": int(n), "bytes": int(b)}
                   for d, n, b in per_day],
        "top_senders": [{"ae_title": a or "", "instances": int(n), "bytes": int(b)}
                        for a, n, b in senders],
    }
