"""identity.py and index/leases.py: who a process is, and the singleton jobs' leases on a
real SQLite file and a real PostgreSQL database (several owners at once)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from pacs_server.config import DatabaseConfig, load_config
from pacs_server.errors import ConfigError
from pacs_server.identity import node_name, process_identity
from pacs_server.index.engine import create_engine, migrate
from pacs_server.index.leases import LeaseRepository
from pacs_server.periodic import PeriodicTask


def test_identity_is_the_node_name_and_the_worker_index() -> None:
    assert process_identity("node-a", env={}) == "node-a"
    assert process_identity("node-a", env={"PACS_WORKER_INDEX": "3"}) == "node-a.w3"
    assert process_identity("node-a", env={"PACS_WORKER_INDEX": "x"}) == "node-a"
    host = node_name("")
    assert host and all(c.isalnum() or c in "._-" for c in host)


@pytest.mark.parametrize("bad", ["../up", "a/b", ".hidden", "x" * 64, "sp ace"])
def test_a_node_name_that_is_no_file_name_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="server.node_name"):
        load_config(None, {"server.node_name": bad})


@pytest.fixture
async def owners(database_cfg: DatabaseConfig) -> AsyncIterator[list[LeaseRepository]]:
    """Three owners, each on an engine of its own (as separate processes are)."""
    engines = [create_engine(database_cfg) for _ in range(3)]
    await migrate(engines[0])
    yield [LeaseRepository(e, f"node-{i}") for i, e in enumerate(engines)]
    for e in engines:
        await e.dispose()


async def test_one_owner_at_a_time_until_expiry_or_release(
        owners: list[LeaseRepository]) -> None:
    a, b, _ = owners
    assert await a.acquire("job", 0.5)
    assert not await b.acquire("job", 0.5)
    assert await a.acquire("job", 0.5)            # renewed by its owner, a second run
    await asyncio.sleep(0.6)
    assert await b.acquire("job", 60)             # expired: taken over
    assert not await a.acquire("job", 60)
    await b.release_all()
    assert await a.acquire("job", 60)             # released: taken at once
    (row,) = await a.rows()
    assert (row.name, row.owner, row.runs) == ("job", "node-0", 4)


async def test_concurrent_acquires_grant_one_owner(owners: list[LeaseRepository]) -> None:
    for round_ in range(10):
        got = await asyncio.gather(*(o.acquire(f"job-{round_}", 60) for o in owners))
        assert sorted(got) == [False, False, True], round_


class Counting(PeriodicTask):
    name = "counting"

    def __init__(self) -> None:
        super().__init__(0.05, at_start=True)
        self.runs = 0

    async def tick(self) -> None:
        self.runs += 1


async def test_a_singleton_task_runs_in_one_process(owners: list[LeaseRepository]) -> None:
    tasks = [Counting() for _ in owners]
    for task, owner in zip(tasks, owners, strict=True):
        task.singleton(owner.acquire)
        await task.start()
    await asyncio.sleep(0.5)
    for task in tasks:
        await task.close()
    ran = [t.runs for t in tasks]
    assert sorted(ran)[:2] == [0, 0] and max(ran) >= 3, ran
