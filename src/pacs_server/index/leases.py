"""Leases: a singleton job runs in one process of all those sharing the index.

One row per job in the `leases` table (migration 0008): its owner (a process
identity, identity.py), when the lease expires (seconds since the epoch, from the
owner's clock: nodes keep their clocks in sync, docs/operations.md) and how many runs
it has granted. `acquire()` takes or renews the lease in one short transaction: an
UPDATE that matches only a row this process owns or one that expired (PostgreSQL
re-checks the condition after waiting for a concurrent updater, SQLite runs one
writer at a time), else an INSERT that the primary key lets only one process make.
The same rows serve SQLite and PostgreSQL; an advisory lock would need a session held
open per job, and would not show who owns what.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import Column, Float, Integer, MetaData, String, Table, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

_meta = MetaData()
leases = Table(
    "leases", _meta,
    Column("name", String(64), primary_key=True),
    Column("owner", String(128), nullable=False),
    Column("expires", Float, nullable=False),
    Column("runs", Integer, nullable=False, default=0),
)


@dataclass(frozen=True)
class LeaseRow:
    name: str
    owner: str
    expires: float
    runs: int


class LeaseRepository:
    """The leases of one process (`owner`)."""

    def __init__(self, engine: AsyncEngine, owner: str) -> None:
        self._engine = engine
        self.owner = owner

    async def acquire(self, name: str, ttl_s: float) -> bool:
        """Take or renew `name` for `ttl_s` seconds and count a run; False while another
        process holds it."""
        now = time.time()
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(leases)
                .where(leases.c.name == name,
                       or_(leases.c.owner == self.owner, leases.c.expires < now))
                .values(owner=self.owner, expires=now + ttl_s, runs=leases.c.runs + 1))
            if result.rowcount:
                return True
        try:
            async with self._engine.begin() as conn:
                await conn.execute(leases.insert().values(
                    name=name, owner=self.owner, expires=now + ttl_s, runs=1))
        except IntegrityError:
            return False
        return True

    async def release_all(self) -> None:
        """Let the others take this process's leases at once (a clean shutdown)."""
        async with self._engine.begin() as conn:
            await conn.execute(update(leases).where(leases.c.owner == self.owner)
                               .values(expires=0.0))

    async def rows(self) -> list[LeaseRow]:
        async with self._engine.connect() as conn:
            result = await conn.execute(select(leases).order_by(leases.c.name))
            return [LeaseRow(r.name, r.owner, float(r.expires), int(r.runs)) for r in result]
