"""Two index writers on one database (as worker processes and nodes run them): each
its own engines, as two worker processes have, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from pacs_server.config import DatabaseConfig
from pacs_server.errors import DuplicateInstance
from pacs_server.index.engine import create_engine, migrate
from pacs_server.index.models import Instance, Patient, Series, Study
from pacs_server.index.repository import IndexRepository
from support.index import index_record

SQLITE_AND_POSTGRES = ["sqlite", "postgresql"]


@pytest.fixture(params=SQLITE_AND_POSTGRES)
async def two_writers(request: pytest.FixtureRequest, tmp_path: Path
                      ) -> AsyncIterator[tuple[IndexRepository, IndexRepository, Any]]:
    cfg = DatabaseConfig(path=str(tmp_path / "index.db"))
    if request.param == "postgresql":
        cfg = DatabaseConfig(url=request.getfixturevalue("postgres_url"))
    reads = create_engine(cfg)
    await migrate(reads)
    engines, repos = [reads], []
    for _ in range(2):
        engine, writer = create_engine(cfg), create_engine(cfg, writer=True)
        engines += [engine, writer]
        repo = IndexRepository(engine, writer_engine=writer)
        await repo.start()
        repos.append(repo)
    yield repos[0], repos[1], reads
    for repo in repos:
        await repo.close()
    for engine in engines:
        await engine.dispose()


async def count(engine: Any, model: Any) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(model))).scalar())


async def test_both_create_the_same_patient_study_and_series_at_once(
        two_writers: tuple[IndexRepository, IndexRepository, Any]) -> None:
    a, b, reads = two_writers
    for _round in range(5):
        study, series = generate_uid(), generate_uid()
        records = [index_record(patient="SHARED", study=study, series=series)
                   for _ in range(8)]
        await asyncio.gather(*(repo.add_instance(rec) for repo, rec in
                               zip([a, b] * 4, records, strict=True)))
    assert await count(reads, Instance) == 40
    assert await count(reads, Series) == 5
    assert await count(reads, Study) == 5
    assert await count(reads, Patient) == 1
    async with reads.connect() as conn:
        counts = (await conn.execute(select(Study.num_instances))).scalars().all()
    assert counts == [8] * 5


async def test_modalities_added_by_either_writer_are_kept(
        two_writers: tuple[IndexRepository, IndexRepository, Any]) -> None:
    a, b, reads = two_writers
    study = generate_uid()
    # Each writer caches the study, then the other adds a modality to it.
    await a.add_instance(index_record(study=study, modality="CT"))
    await b.add_instance(index_record(study=study, modality="MR"))
    await a.add_instance(index_record(study=study, modality="PT"))
    await b.add_instance(index_record(study=study, modality="CT"))
    async with reads.connect() as conn:
        modalities = (await conn.execute(select(Study.modalities))).scalar()
    assert modalities == "CT\\MR\\PT"


async def test_a_row_the_other_removed_is_created_again(
        two_writers: tuple[IndexRepository, IndexRepository, Any]) -> None:
    a, b, reads = two_writers
    study, series = generate_uid(), generate_uid()
    first = index_record(study=study, series=series)
    await a.add_instance(first)                       # a caches study and series
    # b replaces the only instance with one of another study: the series is pruned
    await b.add_instance(index_record(sop=first.sop_instance_uid), replace=True)
    assert await count(reads, Series) == 1
    await a.add_instance(index_record(study=study, series=series))
    assert await count(reads, Series) == 2
    assert await count(reads, Instance) == 2


async def test_the_same_instance_from_both_is_one_row_and_one_duplicate(
        two_writers: tuple[IndexRepository, IndexRepository, Any]) -> None:
    a, b, reads = two_writers
    rec = index_record()
    results = await asyncio.gather(a.add_instance(rec), b.add_instance(rec),
                                   return_exceptions=True)
    assert sorted(type(r).__name__ for r in results) == ["DuplicateInstance", "NoneType"]
    assert any(isinstance(r, DuplicateInstance) for r in results)
    assert await count(reads, Instance) == 1
