"""index/worklist.py on SQLite and PostgreSQL: add/get/remove in one transaction,
narrowing with the indexes, set_step_status, the retention purge."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from pacs_server.config import DatabaseConfig
from pacs_server.index.engine import create_engine, migrate
from pacs_server.index.worklist import WorklistFilter, WorklistRepository, narrowing


def columns(n: int, **over: str) -> dict[str, str]:
    base = {"patient_id": f"P{n}", "patient_name": f"DOE^{n}", "patient_name_norm": f"doe^{n}",
            "accession_number": f"A{n}", "study_instance_uid": f"1.2.{n}",
            "modality": "CT", "station_ae": "CT_01", "start_date": "20241220",
            "start_time": "100000", "sps_id": f"S{n}", "sps_status": "SCHEDULED"}
    return {**base, **over}


def dataset(n: int) -> str:
    return json.dumps({"00100020": {"vr": "LO", "Value": [f"P{n}"]},
                       "00400100": {"vr": "SQ", "Value": [
                           {"00400020": {"vr": "CS", "Value": ["SCHEDULED"]}}]}})


@pytest.fixture(params=["sqlite", "postgresql"])
async def repo(request: pytest.FixtureRequest, tmp_path: Path
               ) -> AsyncIterator[WorklistRepository]:
    cfg = DatabaseConfig(path=str(tmp_path / "index.db"))
    if request.param == "postgresql":
        cfg = DatabaseConfig(url=request.getfixturevalue("postgres_url"))
    engine = create_engine(cfg)
    await migrate(engine)
    yield WorklistRepository(engine)
    await engine.dispose()


async def pks(repo: WorklistRepository, flt: WorklistFilter) -> list[int]:
    return [row.pk for rows in [r async for r in repo.rows(flt)] for row in rows]


async def test_add_get_remove(repo: WorklistRepository) -> None:
    ids = await repo.add([(columns(1), dataset(1)), (columns(2), dataset(2))])
    assert len(ids) == 2 and await repo.count() == 2
    row = await repo.get(ids[0])
    assert row is not None and row.columns["patient_id"] == "P1"
    assert json.loads(row.dataset)["00100020"]["Value"] == ["P1"]
    assert await repo.remove(ids[0]) and not await repo.remove(ids[0])
    assert await repo.get(ids[0]) is None


async def test_narrowing_is_a_superset_on_each_key(repo: WorklistRepository) -> None:
    ids = await repo.add([
        (columns(1), dataset(1)),
        (columns(2, station_ae="CT_02", start_date="20241221"), dataset(2)),
        (columns(3, station_ae="US_01\\CT_02", modality="US"), dataset(3)),
        (columns(4, sps_status="COMPLETED"), dataset(4)),
    ])
    step = {"ScheduledStationAETitle": "CT_02"}
    # The multi-valued station goes to Python (which decides), the others are filtered.
    assert await pks(repo, WorklistFilter({}, step)) == [ids[2], ids[1]]
    assert await pks(repo, WorklistFilter(
        {}, {"ScheduledProcedureStepStartDate": "20241221-"})) == [ids[1]]
    # Ordered by scheduled date and time.
    assert await pks(repo, WorklistFilter({"PatientName": "DOE^*"}, {})) == [ids[0], ids[2],
                                                                            ids[1]]
    assert sorted(await pks(repo, WorklistFilter({}, {}, include_final=True))) == ids
    assert await pks(repo, WorklistFilter({"PatientID": "P4"}, {})) == []


async def test_set_step_status(repo: WorklistRepository) -> None:
    ids = await repo.add([(columns(1), dataset(1)), (columns(2, study_instance_uid="1.2.1"),
                                                    dataset(2))])
    assert await repo.set_step_status("1.2.1", "", "", "STARTED") == 2
    assert await repo.set_step_status("1.2.1", "A1", "S1", "DISCONTINUED") == 1
    row = await repo.get(ids[0])
    assert row is not None
    assert row.columns["sps_status"] == "DISCONTINUED" and row.finished_at is not None
    step = json.loads(row.dataset)["00400100"]["Value"][0]
    assert step["00400020"]["Value"] == ["DISCONTINUED"]
    other = await repo.get(ids[1])
    assert other is not None and other.columns["sps_status"] == "STARTED"
    assert other.finished_at is None
    with pytest.raises(ValueError):
        await repo.set_step_status("1.2.1", "", "", "DONE")


async def test_purge_keeps_recent_and_unfinished(repo: WorklistRepository) -> None:
    await repo.add([(columns(1), dataset(1)), (columns(2), dataset(2))])
    assert await repo.set_step_status("", "A1", "", "COMPLETED") == 1
    assert await repo.purge_finished(datetime.now(UTC) - timedelta(days=1)) == 0
    assert await repo.purge_finished(datetime.now(UTC) + timedelta(seconds=5)) == 1
    assert await repo.count() == 1


async def test_date_and_station_query_uses_an_index(tmp_path: Path) -> None:
    engine = create_engine(DatabaseConfig(path=str(tmp_path / "index.db")))
    await migrate(engine)
    try:
        flt = WorklistFilter({}, {"ScheduledProcedureStepStartDate": "20241220",
                                  "ScheduledStationAETitle": "CT_01"})
        from sqlalchemy import and_, select

        from pacs_server.index.worklist import WorklistItem

        stmt = select(WorklistItem.pk).where(and_(*narrowing(flt)))
        sql = str(stmt.compile(engine.sync_engine, compile_kwargs={"literal_binds": True}))
        async with engine.connect() as conn:
            plan = " ".join(str(r[-1]) for r in await conn.execute(
                text("EXPLAIN QUERY PLAN " + sql)))
        assert "ix_worklist_date_station" in plan or "ix_worklist_station_date" in plan, plan
    finally:
        await engine.dispose()


async def test_a_late_started_does_not_reopen_a_finished_item(repo: WorklistRepository) -> None:
    """The N-CREATE's STARTED reaching the index after the final N-SET's COMPLETED (two
    workers or nodes) leaves the item COMPLETED."""
    (pk,) = await repo.add([(columns(1), dataset(1))])
    assert await repo.set_step_status("", "A1", "", "COMPLETED") == 1
    assert await repo.set_step_status("", "A1", "", "STARTED") == 0
    row = await repo.get(pk)
    assert row is not None and row.columns["sps_status"] == "COMPLETED"
    assert json.loads(row.dataset)["00400100"]["Value"][0]["00400020"]["Value"] == ["COMPLETED"]
    assert row.finished_at is not None


async def test_two_processes_updating_one_item_take_turns(database_cfg: DatabaseConfig) -> None:
    """Two engines (as two processes have) updating the same items at once: none fails
    with a stale read ("database is locked" on SQLite), none overwrites what the other
    wrote from an old read (PostgreSQL), and every item ends final."""
    engines = [create_engine(database_cfg) for _ in range(2)]
    await migrate(engines[0])
    a, b = (WorklistRepository(e) for e in engines)
    try:
        for n in range(1, 9):
            (pk,) = await a.add([(columns(n), dataset(n))])
            final = ("COMPLETED", "DISCONTINUED")[n % 2]
            # Both processes at once, several connections each: STARTED from one,
            # the final status from the other, in both orders.
            calls = [(a if i % 2 else b).set_step_status("", f"A{n}", "", "STARTED")
                     for i in range(4)]
            calls.insert(n % 4, (b if n % 2 else a).set_step_status("", f"A{n}", "", final))
            await asyncio.gather(*calls)
            row = await b.get(pk)
            assert row is not None and row.columns["sps_status"] == final, n
            step = json.loads(row.dataset)["00400100"]["Value"][0]
            assert step["00400020"]["Value"] == [final], n
    finally:
        for engine in engines:
            await engine.dispose()
