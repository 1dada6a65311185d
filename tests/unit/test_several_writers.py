"""Two index writers (two processes' IndexRepository, each with its own engines) on one
real SQLite file and one real PostgreSQL database: patients, studies and series created
by both at once, every instance committed once, the study's attribute sets the union of
what both wrote, and the races retried, not failed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from pacs_server.config import DatabaseConfig
from pacs_server.errors import DuplicateInstance
from pacs_server.index.engine import WriterLock, create_engine, migrate
from pacs_server.index.models import Instance, Patient, Study
from pacs_server.index.repository import IndexRepository
from support.index import index_record

MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"


@pytest.fixture
async def writers(database_cfg: DatabaseConfig
                  ) -> AsyncIterator[tuple[IndexRepository, IndexRepository]]:
    cfg = database_cfg
    engines = [create_engine(cfg), create_engine(cfg, writer=True),
               create_engine(cfg), create_engine(cfg, writer=True)]
    await migrate(engines[0])
    a = IndexRepository(engines[0], writer_engine=engines[1])
    b = IndexRepository(engines[2], writer_engine=engines[3])
    await a.start()
    await b.start()
    yield a, b
    await a.close()
    await b.close()
    for e in engines:
        await e.dispose()


async def test_both_create_the_same_studies_at_once(
        writers: tuple[IndexRepository, IndexRepository]) -> None:
    a, b = writers
    studies = [generate_uid() for _ in range(8)]
    jobs = []
    for n, study in enumerate(studies):
        patient = f"PAT{n % 3}"
        series_ct, series_mr = generate_uid(), generate_uid()
        for _ in range(3):
            jobs.append(a.add_instance(index_record(patient=patient, study=study,
                                                    series=series_ct, modality="CT")))
            jobs.append(b.add_instance(index_record(patient=patient, study=study,
                                                    series=series_mr, modality="MR",
                                                    sop_class=MR_IMAGE)))
    assert await asyncio.gather(*jobs) == [None] * len(jobs)
    engine = a.reader._engine   # noqa: SLF001 - the test reads the tables it checks
    async with engine.connect() as conn:
        sets = dict((await conn.execute(select(Study.study_instance_uid, Study.modalities)
                                        .where(Study.study_instance_uid.in_(studies)))).all())
        instances = (await conn.execute(select(Instance.pk))).all()
        patients = (await conn.execute(select(Patient.patient_id))).scalars().all()
    assert sets == {s: "CT\\MR" for s in studies}
    assert len(instances) == len(jobs)
    assert sorted(patients) == ["PAT0", "PAT1", "PAT2"]


async def test_the_same_instance_from_both_is_committed_once(
        writers: tuple[IndexRepository, IndexRepository]) -> None:
    a, b = writers
    for _ in range(10):
        rec = index_record()
        got = await asyncio.gather(a.add_instance(rec), b.add_instance(rec),
                                   return_exceptions=True)
        assert sorted(type(g).__name__ for g in got) == ["DuplicateInstance", "NoneType"]
        assert any(isinstance(g, DuplicateInstance) for g in got)


@contextlib.asynccontextmanager
async def sqlite_writer(tmp_path: Path, **callbacks: Any
                        ) -> AsyncIterator[tuple[IndexRepository, WriterLock]]:
    """One writer on a SQLite file, and the lock file as another process's writer
    takes it."""
    cfg = DatabaseConfig(path=str(tmp_path / "index.db"))
    engines = [create_engine(cfg), create_engine(cfg, writer=True)]
    await migrate(engines[0])
    repo = IndexRepository(engines[0], writer_engine=engines[1], **callbacks)
    other = WriterLock(tmp_path / "index.db.writer-lock")
    await repo.start()
    try:
        yield repo, other
    finally:
        await repo.close()
        other.close()
        for e in engines:
            await e.dispose()


async def test_a_writer_waiting_for_another_processs_lock_reports_the_wait(
        tmp_path: Path) -> None:
    waits: list[float] = []
    async with sqlite_writer(tmp_path, on_lock_wait=waits.append) as (repo, other):
        await repo.add_instance(index_record())
        assert waits == [0.0]                     # nobody held it
        async with other:
            pending = asyncio.ensure_future(repo.add_instance(index_record()))
            await asyncio.sleep(0.2)
            assert not pending.done()             # waits for the other writer
        await pending
        assert len(waits) == 2 and waits[1] >= 0.15, waits


async def test_what_queues_while_another_process_writes_is_one_commit(
        tmp_path: Path) -> None:
    sizes: list[int] = []
    async with sqlite_writer(tmp_path, on_commit=sizes.append) as (repo, other):
        async with other:
            first = asyncio.ensure_future(repo.add_instance(index_record()))
            await asyncio.sleep(0.1)          # the writer waits for the lock with it
            rest = [asyncio.ensure_future(repo.add_instance(index_record()))
                    for _ in range(4)]
            await asyncio.sleep(0.1)
        assert await asyncio.gather(first, *rest) == [None] * 5
        assert sizes == [5]                   # not [1, 4]: one wait, one commit
