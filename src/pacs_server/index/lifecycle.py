"""The index as a component of the server: engines, migrations, the repository."""

from __future__ import annotations

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from pacs_server.config import DatabaseConfig
from pacs_server.index.engine import create_engine, database_url, migrate, safe_url
from pacs_server.index.mpps import MppsRepository
from pacs_server.index.repository import IndexRepository
from pacs_server.metrics import Metrics

log = structlog.get_logger(__name__)


class IndexComponent:
    """Opens the index at start (migrating it to the newest schema) and closes it last.

    Two engines: the readers', and the writer's (one connection kept by the writer task,
    see index/engine.py), both disposed at close after queued writes are committed.
    """

    name = "index"

    def __init__(self, cfg: DatabaseConfig, metrics: Metrics) -> None:
        self._cfg = cfg
        self._metrics = metrics
        self._engines: list[AsyncEngine] = []
        self._repo: IndexRepository | None = None
        self._steps: MppsRepository | None = None

    @property
    def repo(self) -> IndexRepository:
        assert self._repo is not None, "index not started"
        return self._repo

    @property
    def steps(self) -> MppsRepository:
        """The MPPS table, on the readers' engine: its read-modify-write needs the
        explicit BEGIN that engine emits (the writer's is the index writer's alone)."""
        assert self._steps is not None, "index not started"
        return self._steps

    @property
    def url(self) -> str:
        """The database URL without its password."""
        return safe_url(database_url(self._cfg))

    async def start(self) -> None:
        engine = create_engine(self._cfg)
        self._engines.append(engine)
        await migrate(engine)
        self._steps = MppsRepository(engine)
        writer = create_engine(self._cfg, writer=True)
        self._engines.append(writer)
        self._repo = IndexRepository(engine, self._cfg.commit_batch,
                                     on_commit=self._metrics.index_batch.observe,
                                     writer_engine=writer)
        await self._repo.start()

    async def close(self) -> None:
        if self._repo is not None:
            await self._repo.close()
            self._repo = None
        self._steps = None
        while self._engines:
            await self._engines.pop().dispose()
