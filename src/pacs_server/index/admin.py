"""Admin state kept in the index database (migration 0007): calling AE titles and C-MOVE
peers added through the admin API, and instances whose files `verify` found missing.

Separate from IndexRepository: these rows change rarely, at an operator's request, and
are written with their own short transaction (SQLite's busy timeout covers the moment
the index writer holds the lock).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from pacs_server.errors import ConflictingRequest

_meta = MetaData()
ae_titles = Table(
    "admin_ae_titles", _meta,
    Column("pk", Integer, primary_key=True),
    Column("ae_title", String(16), nullable=False),
    Column("host", String(255), nullable=False, default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
peers = Table(
    "admin_peers", _meta,
    Column("pk", Integer, primary_key=True),
    Column("ae_title", String(16), nullable=False, unique=True),
    Column("host", String(255), nullable=False),
    Column("port", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
missing = Table(
    "missing_instances", _meta,
    Column("sop_instance_uid", String(64), primary_key=True),
    Column("path", Text, nullable=False),
    Column("problem", String(32), nullable=False),
    Column("detected_at", DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True)
class AeRow:
    ae_title: str
    host: str


@dataclass(frozen=True)
class PeerRow:
    ae_title: str
    host: str
    port: int


class AdminRepository:
    """Reads and writes of the admin tables."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def ae_titles(self) -> list[AeRow]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(select(ae_titles.c.ae_title, ae_titles.c.host)
                                      .order_by(ae_titles.c.ae_title, ae_titles.c.host))
            return [AeRow(r.ae_title, r.host) for r in rows]

    async def add_ae_title(self, ae_title: str, host: str) -> None:
        """Raises ConflictingRequest when the entry exists."""
        try:
            async with self._engine.begin() as conn:
                await conn.execute(ae_titles.insert().values(
                    ae_title=ae_title, host=host, created_at=datetime.now(UTC)))
        except IntegrityError:
            raise ConflictingRequest(f"AE title {ae_title!r} is already allowed"
                                     + (f" from {host}" if host else "")) from None

    async def remove_ae_title(self, ae_title: str, host: str) -> bool:
        async with self._engine.begin() as conn:
            result = await conn.execute(delete(ae_titles).where(
                ae_titles.c.ae_title == ae_title, ae_titles.c.host == host))
            return bool(result.rowcount)

    async def peers(self) -> list[PeerRow]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(select(peers.c.ae_title, peers.c.host, peers.c.port)
                                      .order_by(peers.c.ae_title))
            return [PeerRow(r.ae_title, r.host, int(r.port)) for r in rows]

    async def add_peer(self, ae_title: str, host: str, port: int) -> None:
        """Raises ConflictingRequest when a peer has this AE title."""
        try:
            async with self._engine.begin() as conn:
                await conn.execute(peers.insert().values(
                    ae_title=ae_title, host=host, port=port, created_at=datetime.now(UTC)))
        except IntegrityError:
            raise ConflictingRequest(f"peer {ae_title!r} exists; remove it first") from None

    async def remove_peer(self, ae_title: str) -> bool:
        async with self._engine.begin() as conn:
            result = await conn.execute(delete(peers).where(peers.c.ae_title == ae_title))
            return bool(result.rowcount)

    async def mark_missing(self, entries: list[tuple[str, str, str]]) -> None:
        """Record (SOP Instance UID, path, problem) rows found by verify --repair."""
        if not entries:
            return
        now = datetime.now(UTC)
        async with self._engine.begin() as conn:
            await conn.execute(delete(missing).where(
                missing.c.sop_instance_uid.in_([e[0] for e in entries])))
            await conn.execute(missing.insert(), [
                {"sop_instance_uid": uid, "path": path, "problem": problem,
                 "detected_at": now} for uid, path, problem in entries])

    async def missing(self) -> list[tuple[str, str, str]]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(select(missing.c.sop_instance_uid, missing.c.path,
                                             missing.c.problem))
            return [(r[0], r[1], r[2]) for r in rows]
