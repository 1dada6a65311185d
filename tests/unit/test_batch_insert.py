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


async def with_a_duplicate(repo: IndexRepository, existing: Any, series: str, n: int,
                           at: int) -> tuple[list[Any], list[Any]]:
    """Index `existing`, then `n` new instances of `series` (same study) in one group
    commit with a copy of `existing` at position `at`; the batch and its results."""
    await repo.add_instance(existing)
    study = existing.study_instance_uid
    batch = [index_record(study=study, series=series) for _ in range(n)]
    batch.insert(at, index_record(study=study, series=series, sop=existing.sop_instance_uid))
    results = await asyncio.gather(*(repo.add_instance(r) for r in batch),
                                   return_exceptions=True)
    return batch, results


async def test_a_failing_row_fails_alone_and_nothing_acknowledged_is_lost(
        cfg: DatabaseConfig) -> None:
    study, series = generate_uid(), generate_uid()
    async with opened(cfg) as (repo, _):
        existing = index_record(study=study, series=series)
        batch, results = await with_a_duplicate(repo, existing, series, 12, 5)
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


async def series_rows(engine: Any, study_uid: str) -> dict[str, dict[str, Any]]:
    async with engine.connect() as conn:
        result = await conn.execute(select(Series).join(Study).where(
            Study.study_instance_uid == study_uid))
        return {row.series_instance_uid: dict(row._mapping) for row in result}


async def test_new_series_of_a_known_study_are_one_transaction_with_the_same_rows(
        cfg: DatabaseConfig) -> None:
    study = generate_uid()

    def rec(series: str, n: int) -> Any:
        return index_record(study=study, series=series, header=b"\x08\x00\x05\x00CS\x00\x00",
                            series_values={"series_number": n, "series_description": f"S{n}"},
                            instance_values={"instance_number": n})

    async with opened(cfg) as (repo, engine):
        first = rec(generate_uid(), 1)
        await repo.add_instance(first)               # the general path: a new study
        assert (repo.writer.single_statement_batches, repo.writer.new_series_batches) == (0, 0)
        # Two new series in one group commit, one of them with two instances.
        two, three = generate_uid(), generate_uid()
        batch = [rec(two, 2), rec(three, 3), rec(two, 4)]
        assert await asyncio.gather(*(repo.add_instance(r) for r in batch)) == [None] * 3
        assert repo.writer.new_series_batches == 1
        # Their series are cached now: the next instance is one statement.
        await repo.add_instance(rec(three, 5))
        assert repo.writer.single_statement_batches == 1
        rows = await series_rows(engine, study)
        assert await hierarchy_counts(engine, two) == (2, 5, 5)
        async with engine.connect() as conn:
            num_series = (await conn.execute(select(Study.num_series, Patient.num_series)
                                             .join(Patient))).one()
        assert tuple(num_series) == (3, 3)                  # the triggers ran
        instances = await instance_rows(engine, three)
    general = rows[first.series_instance_uid]
    assert set(rows) == {first.series_instance_uid, two, three}
    for uid, n in ((two, 2), (three, 3)):
        row = rows[uid]
        assert (row["series_number"], row["series_description"]) == (n, f"S{n}")
        assert {k: v for k, v in row.items() if k not in (
            "pk", "series_instance_uid", "series_number", "series_description",
            "num_instances")} == {k: v for k, v in general.items() if k not in (
                "pk", "series_instance_uid", "series_number", "series_description",
                "num_instances")}
    assert {row["series_pk"] for row in instances.values()} == {rows[three]["pk"]}
    assert rows[two]["num_instances"] == 2 and rows[three]["num_instances"] == 2


async def test_a_series_another_writer_created_meanwhile_is_found_not_doubled(
        cfg: DatabaseConfig) -> None:
    """Another process (here a second writer on the same database) created the series
    since this writer cached the study: its INSERT fails, nothing is written, and the
    general path finds the series."""
    study, first, shared = generate_uid(), generate_uid(), generate_uid()
    async with opened(cfg) as (repo, engine), opened(cfg) as (other, _):
        await repo.add_instance(index_record(study=study, series=first))
        await other.add_instance(index_record(study=study, series=shared))
        late = index_record(study=study, series=shared)
        assert await repo.add_instance(late) is None
        assert repo.writer.new_series_batches == 0
        assert set(await series_rows(engine, study)) == {first, shared}
        assert await hierarchy_counts(engine, shared) == (2, 3, 3)
        assert await repo.instance_path(late.sop_instance_uid) == str(late.rel_path)


async def test_a_failing_row_of_a_new_series_batch_leaves_no_series_behind_it(
        cfg: DatabaseConfig) -> None:
    study, known, fresh = generate_uid(), generate_uid(), generate_uid()
    async with opened(cfg) as (repo, engine):
        existing = index_record(study=study, series=known)
        _, results = await with_a_duplicate(repo, existing, fresh, 6, 3)
        assert isinstance(results[3], DuplicateInstance)
        assert [r for i, r in enumerate(results) if i != 3] == [None] * 6
        assert set(await series_rows(engine, study)) == {known, fresh}
        assert await hierarchy_counts(engine, fresh) == (6, 7, 7)
