"""index/mpps.py on a real SQLite file and a real PostgreSQL database: create, duplicate,
read-modify-write, concurrent updates, while the index writer commits alongside."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from pacs_server.config import DatabaseConfig
from pacs_server.errors import InstanceExists, NoSuchInstance, StepFinalised
from pacs_server.index.engine import create_engine, migrate
from pacs_server.index.mpps import MppsRepository, StepRecord


@pytest.fixture(params=["sqlite", "postgresql"])
async def steps(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MppsRepository]:
    cfg = DatabaseConfig(path=str(tmp_path / "index.db"))
    if request.param == "postgresql":
        cfg = DatabaseConfig(url=request.getfixturevalue("postgres_url"))
    engine = create_engine(cfg)
    await migrate(engine)
    yield MppsRepository(engine)
    await engine.dispose()


def step(uid: str, **values: str) -> StepRecord:
    return StepRecord(sop_instance_uid=uid, status="IN PROGRESS", dataset=b"\x08\x00",
                      study_instance_uid="1.2.3", accession_number="A1", sps_id="S1",
                      calling_ae="CT_01", **values)


async def test_create_get_and_duplicate(steps: MppsRepository) -> None:
    created = await steps.create(step("1.2.3.1", modality="CT"))
    assert created.created_at is not None and created.created_at == created.updated_at
    got = await steps.get("1.2.3.1")
    assert got is not None
    assert (got.status, got.modality, got.dataset, got.calling_ae) == (
        "IN PROGRESS", "CT", b"\x08\x00", "CT_01")
    with pytest.raises(InstanceExists):
        await steps.create(step("1.2.3.1", modality="MR"))
    assert (await steps.get("1.2.3.1")).modality == "CT"  # type: ignore[union-attr]
    assert await steps.get("1.2.3.404") is None


async def test_update_applies_or_refuses(steps: MppsRepository) -> None:
    await steps.create(step("1.2.3.2"))
    done = await steps.update("1.2.3.2", lambda r: replace(r, status="COMPLETED",
                                                           end_date="20241220"))
    assert (done.status, done.end_date, done.calling_ae) == ("COMPLETED", "20241220", "CT_01")

    def refuse(current: StepRecord) -> StepRecord:
        raise StepFinalised(current.status)

    with pytest.raises(StepFinalised):
        await steps.update("1.2.3.2", refuse)
    with pytest.raises(NoSuchInstance):
        await steps.update("1.2.3.404", lambda r: r)
    assert [r.sop_instance_uid for r in await steps.recent("COMPLETED")] == ["1.2.3.2"]
    assert await steps.recent("DISCONTINUED") == []


async def test_concurrent_updates_do_not_lose_one(steps: MppsRepository) -> None:
    """Read-modify-write under contention: every change lands (the first statement
    takes the lock, so no update works on a stale read)."""
    await steps.create(step("1.2.3.3", pps_id=""))

    async def append(i: int) -> None:
        await steps.update("1.2.3.3", lambda r: replace(r, pps_id=f"{r.pps_id}{i % 10}"))

    await asyncio.gather(*(append(i) for i in range(10)))
    got = await steps.get("1.2.3.3")
    assert got is not None and sorted(got.pps_id) == sorted("0123456789")
