"""The index as a component of the server: engines, migrations, the repository."""

from __future__ import annotations

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from pacs_server.config import DatabaseConfig
from pacs_server.index.admin import AdminRepository
from pacs_server.index.commitment import CommitmentRepository
from pacs_server.index.engine import (
    create_engine,
    database_url,
    migrate,
    safe_url,
    thread_connector,
)
from pacs_server.index.inventory import Inventory
from pacs_server.index.leases import LeaseRepository
from pacs_server.index.mpps import MppsRepository
from pacs_server.index.repository import IndexRepository
from pacs_server.index.worklist import WorklistRepository
from pacs_server.metrics import Metrics

log = structlog.get_logger(__name__)


class IndexComponent:
    """Opens the index at start (migrating it to the newest schema) and closes it last.

    Two engines: the readers', and the writer's (one connection kept by the writer task,
    see index/engine.py), both disposed at close after queued writes are committed. The
    index's other tables (MPPS steps, worklist items, Storage Commitments, the admin
    API's state) and the operators' whole-archive reads have their repositories on the
    readers' engine: each writes in short transactions of its own,
    with the explicit BEGIN that engine emits. No engine is seen outside `index/`.
    """

    name = "index"

    def __init__(self, cfg: DatabaseConfig, metrics: Metrics, identity: str = "",
                 migrations: bool = True) -> None:
        """`identity`: this process's (identity.py), the owner of its leases.
        `migrations`: False in a worker, whose supervisor ran them before starting it."""
        self._cfg = cfg
        self._identity = identity
        self._leases: LeaseRepository | None = None
        self._metrics = metrics
        self._migrations = migrations
        self._engines: list[AsyncEngine] = []
        self._repo: IndexRepository | None = None
        self._steps: MppsRepository | None = None
        self._worklist: WorklistRepository | None = None
        self._commitments: CommitmentRepository | None = None
        self._admin: AdminRepository | None = None
        self._inventory: Inventory | None = None

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
    def worklist(self) -> WorklistRepository:
        """The worklist items, on the readers' engine (short transactions of their own)."""
        assert self._worklist is not None, "index not started"
        return self._worklist

    @property
    def commitments(self) -> CommitmentRepository:
        """Pending Storage Commitments, on the readers' engine."""
        assert self._commitments is not None, "index not started"
        return self._commitments

    @property
    def admin(self) -> AdminRepository:
        """AE titles and peers added through the admin API, missing instances."""
        assert self._admin is not None, "index not started"
        return self._admin

    @property
    def inventory(self) -> Inventory:
        """Whole-archive reads: verify's file list, stats, the health query."""
        assert self._inventory is not None, "index not started"
        return self._inventory

    @property
    def leases(self) -> LeaseRepository:
        """The singleton jobs' leases of this process (its identity)."""
        assert self._leases is not None, "index not started"
        return self._leases

    @property
    def url(self) -> str:
        """The database URL without its password."""
        return safe_url(database_url(self._cfg))

    async def start(self) -> None:
        engine = create_engine(self._cfg)
        self._engines.append(engine)
        if self._migrations:
            await migrate(engine)
        self._steps = MppsRepository(engine)
        self._worklist = WorklistRepository(engine)
        self._commitments = CommitmentRepository(engine)
        self._admin = AdminRepository(engine)
        self._inventory = Inventory(engine)
        self._leases = LeaseRepository(engine, self._identity)
        writer = create_engine(self._cfg, writer=True)
        self._engines.append(writer)
        self._repo = IndexRepository(engine, self._cfg.commit_batch,
                                     on_commit=self._metrics.index_batch.observe,
                                     writer_engine=writer,
                                     on_retry=lambda r: self._metrics.index_retries.labels(
                                         r).inc(),
                                     on_lock_wait=self._metrics.index_lock_wait.observe,
                                     thread_connect=thread_connector(self._cfg))
        await self._repo.start()

    async def close(self) -> None:
        if self._repo is not None:
            await self._repo.close()
            self._repo = None
        if self._leases is not None:
            try:
                await self._leases.release_all()
            except Exception as exc:  # the database is gone: the leases simply expire
                log.warning("index.lease_release_failed", error=str(exc))
            self._leases = None
        self._steps = self._worklist = self._commitments = None
        self._admin = self._inventory = None
        while self._engines:
            await self._engines.pop().dispose()
