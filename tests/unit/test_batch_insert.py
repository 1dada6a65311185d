"""index/batch_insert.py through the writer, on a real SQLite file and a real PostgreSQL
database: a batch of known series is one statement, writes the rows the general path
writes, and a failing row costs only itself; nothing acknowledged is missing after a
restart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from pacs_server.config import DatabaseConfig
from pacs_server.errors import DuplicateInstance
from pacs_server.index.batch_insert import MAX_ROWS, BatchInsert
from pacs_server.index.engine import create_engine, migrate
from pacs_server.index.models import Instance, Patient, Series, Study
from pacs_server.index.repository import IndexRepository
from support.index import index_record


@pytest.fixture(params=["sqlite", "postgresql"])
def cfg(request: pytest.FixtureRequest, tmp_path: Path) -> DatabaseConfig:
    if request.param == "postgresql":
        return DatabaseConfig(url=request.getfixturevalue("postgres_url"))
    return DatabaseConfig(path=str(tmp_path / "index.db"))


@asynccontextmanager
async def opened(cfg: DatabaseConfig) -> AsyncIterator[tuple[IndexRepository, Any]]:
    """The repository as the server runs it; leaving it is a clean shutdown."""
    engine, writer = create_engine(cfg), create_engine(cfg, writer=True)
    await migrate(engine)
    repo = IndexRepository(engine, writer_engine=writer)
    await repo.start()
    try:
        yield repo, engine
    finally:
        await repo.close()
        await writer.dispose()
        await engine.dispose()


async def instance_rows(engine: Any, series_uid: str) -> dict[str, dict[str, Any]]:
    async with engine.connect() as conn:
        result = await conn.execute(select(Instance).join(Series).where(
            Series.series_instance_uid == series_uid))
        return {row.sop_instance_uid: dict(row._mapping) for row in result}


async def hierarchy_counts(engine: Any, series_uid: str) -> tuple[int, int, int]:
    async with engine.connect() as conn:
        row = (await conn.execute(
            select(Series.num_instances, Study.num_instances, Patient.num_instances)
            .join(Study, Series.study_pk == Study.pk).join(Patient)
            .where(Series.series_instance_uid == series_uid))).one()
    return tuple(row)


async def test_a_batch_of_a_known_series_is_one_statement_with_the_same_rows(
        cfg: DatabaseConfig) -> None:
    study, series = generate_uid(), generate_uid()
    when = datetime(2026, 12, 1, 22, 30, 15, 123456, tzinfo=UTC)

    def rec(n: int | None) -> Any:
        r = index_record(study=study, series=series, header=b"\x08\x00\x05\x00CS\x00\x00",
                         size=1000 + (n or 0), instance_values={"instance_number": n})
        r.received_at = when
        return r

    async with opened(cfg) as (repo, engine):
        first = rec(1)
        await repo.add_instance(first)                # the general path: a new series
        assert repo.writer.single_statement_batches == 0
        batch = [rec(n) for n in (2, None, 4, 5)]
        assert await asyncio.gather(*(repo.add_instance(r) for r in batch)) == [None] * 4
        assert repo.writer.single_statement_batches == 1
        rows = await instance_rows(engine, series)
        assert await hierarchy_counts(engine, series) == (5, 5, 5)   # the triggers ran
    general = rows[first.sop_instance_uid]
    for r in batch:
        row = rows[r.sop_instance_uid]
        assert row["instance_number"] == r.instance["instance_number"]
        assert row["size"] == r.size
        assert row["path"] == str(r.rel_path)
        same = {k: v for k, v in row.items()
                if k not in ("pk", "sop_instance_uid", "instance_number", "size", "path")}
        assert same == {k: v for k, v in general.items()
                        if k not in ("pk", "sop_instance_uid", "instance_number", "size",
                                     "path")}
    assert bytes(general["header"]) == b"\x08\x00\x05\x00CS\x00\x00"
    assert general["received_at"].replace(tzinfo=UTC) == when


async def test_a_failing_row_fails_alone_and_nothing_acknowledged_is_lost(
        cfg: DatabaseConfig) -> None:
    study, series = generate_uid(), generate_uid()
    async with opened(cfg) as (repo, _):
        existing = index_record(study=study, series=series)
        await repo.add_instance(existing)
        batch = [index_record(study=study, series=series) for _ in range(12)]
        batch.insert(5, index_record(study=study, series=series,
                                     sop=existing.sop_instance_uid))
        results = await asyncio.gather(*(repo.add_instance(r) for r in batch),
                                       return_exceptions=True)
    assert isinstance(results[5], DuplicateInstance)
    acknowledged = {r.sop_instance_uid for r, res in zip(batch, results, strict=True)
                    if res is None}
    assert len(acknowledged) == 12
    async with opened(cfg) as (repo, engine):         # a restart
        stored = set(await instance_rows(engine, series))
        assert stored == acknowledged | {existing.sop_instance_uid}
        assert await hierarchy_counts(engine, series) == (13, 13, 13)
        # The caches are cold after a restart: the next instance looks them up.
        later = index_record(study=study, series=series)
        await repo.add_instance(later)
        assert await repo.instance_path(later.sop_instance_uid) == str(later.rel_path)


async def test_a_new_modality_or_sop_class_takes_the_general_path(
        cfg: DatabaseConfig) -> None:
    study, series = generate_uid(), generate_uid()
    async with opened(cfg) as (repo, engine):
        await repo.add_instance(index_record(study=study, series=series))
        await repo.add_instance(index_record(study=study, series=series,
                                             sop_class="1.2.840.10008.5.1.4.1.1.7"))
        assert repo.writer.single_statement_batches == 0
        await repo.add_instance(index_record(study=study, series=series))
        assert repo.writer.single_statement_batches == 1
        async with engine.connect() as conn:
            sops = (await conn.execute(select(Study.sop_classes))).scalar()
    assert sops == "1.2.840.10008.5.1.4.1.1.2\\1.2.840.10008.5.1.4.1.1.7"


async def test_the_statement_binds_every_row_in_order(tmp_path: Path) -> None:
    engine = create_engine(DatabaseConfig(path=str(tmp_path / "index.db")))
    try:
        insert = BatchInsert(engine.dialect)
        sql = insert.statement(3)
        assert sql.count("?") == 3 * len(Instance.__table__.columns[1:])
        assert insert.statement(3) is sql                    # compiled once
        assert MAX_ROWS * len(Instance.__table__.columns) < 32766
    finally:
        await engine.dispose()
