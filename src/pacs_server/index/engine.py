"""The index engines: SQLite pragmas, real transactions, migrations."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from pacs_server.config import DatabaseConfig
from pacs_server.errors import StartupError

MIGRATIONS = Path(__file__).parent / "migrations"
_MIGRATE_LOCK = 0x5041435301      # PostgreSQL advisory lock key of the migrations
_IMMEDIATE = "pacs_immediate"     # execution option: SQLite BEGIN IMMEDIATE (immediate())


def database_url(cfg: DatabaseConfig) -> str:
    """The SQLAlchemy URL: `url` if set, else the SQLite file at `path`."""
    if cfg.url:
        return cfg.url
    return f"sqlite+aiosqlite:///{sqlite_path(cfg)}"


def sqlite_path(cfg: DatabaseConfig) -> Path:
    """The SQLite index file `database.path` names."""
    return Path(cfg.path).expanduser().resolve()


class WriterLock:
    """A lock file next to a SQLite index, taken by the writer of every process around
    each transaction (worker processes, or several servers on one file).

    SQLite lets one writer in at a time; the others wait in its busy handler, which
    polls with sleeps of 1 to 100 ms. An flock is handed over by the kernel the moment
    the holder lets go, and only one process is ever inside SQLite's write lock.

    The file also holds the removal `generation`, read under the lock: a writer that
    deletes a patient, study or series row bumps it, and the others then forget the
    primary keys they cached (SQLite reuses the rowid of a deleted last row, so a
    stale key may name another row without failing any constraint).
    """

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self.generation = 0
        self.waited_s = 0.0     # how long the last acquisition waited for another writer

    @classmethod
    def for_engine(cls, engine: AsyncEngine) -> WriterLock | None:
        """The lock of a SQLite engine's file (None for another database, or memory)."""
        database = engine.url.database
        if engine.url.get_backend_name() != "sqlite" or not database or database == ":memory:":
            return None
        return cls(Path(f"{engine.url.database}.writer-lock"))

    async def __aenter__(self) -> None:
        if not self._take_now():
            started = time.perf_counter()
            await asyncio.to_thread(fcntl.flock, self._fd, fcntl.LOCK_EX)
            self._taken(started)

    def acquire(self) -> None:
        """`async with` for a thread that may block (index/thread_commit.py)."""
        if not self._take_now():
            started = time.perf_counter()
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            self._taken(started)

    def release(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _take_now(self) -> bool:
        """The lock if nobody holds it (then waited_s is 0 and the generation read)."""
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        self._taken(None)
        return True

    def _taken(self, waiting_since: float | None) -> None:
        self.waited_s = 0.0 if waiting_since is None else time.perf_counter() - waiting_since
        self.generation = int.from_bytes(os.pread(self._fd, 8, 0).ljust(8, b"\0"), "little")

    def bump(self) -> int:
        """Count a removal (while holding the lock); returns the new generation."""
        self.generation += 1
        os.pwrite(self._fd, self.generation.to_bytes(8, "little"), 0)
        return self.generation

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self._fd)


def create_engine(cfg: DatabaseConfig, writer: bool = False) -> AsyncEngine:
    """Build the engine; for SQLite, make transactions mean what they say.

    pysqlite's legacy transaction handling defers BEGIN; the documented SQLAlchemy recipe
    turns that off and emits BEGIN ourselves, so a read-modify-write is atomic.

    `writer=True` builds the engine of the index writer (IndexRepository), the only code
    that writes instances. Its common write is one autocommitted statement sent through
    the driver (index/batch_insert.py), so its connections run in autocommit too; its
    SQLAlchemy transactions (new parents, replacements, removals) start with BEGIN
    IMMEDIATE, taking SQLite's write lock before their first read as pysqlite's implicit
    BEGIN did before their first write.
    """
    url = database_url(cfg)
    if not url.startswith("sqlite"):
        return create_async_engine(url, pool_pre_ping=True)
    path = sqlite_path(cfg)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"database directory {path.parent} cannot be created: "
                           f"{exc.strerror}") from None
    engine = create_async_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        _configure_sqlite(dbapi_conn, cfg)

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writer or conn.get_execution_options().get(
            _IMMEDIATE) else "BEGIN")

    return engine


def _configure_sqlite(dbapi_conn: Any, cfg: DatabaseConfig) -> None:
    """Every SQLite connection of the index: autocommit unless BEGIN is sent, the
    journal and durability of the configuration, foreign keys enforced."""
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    if cfg.wal_mode:
        cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA synchronous={cfg.synchronous.upper()}")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA cache_size=-65536")  # 64 MiB page cache per connection
    cur.close()


def thread_connector(cfg: DatabaseConfig) -> Callable[[], sqlite3.Connection] | None:
    """A plain sqlite3 connection to the index file, configured as the engines' are,
    for the writes committed by association threads (index/thread_commit.py); None
    when the index is not a SQLite file named by `database.path`."""
    if cfg.url or cfg.path == ":memory:":
        return None
    path = sqlite_path(cfg)

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(path, timeout=30, check_same_thread=False)
        _configure_sqlite(conn, cfg)
        return conn
    return connect


def immediate(engine: AsyncEngine) -> AsyncEngine:
    """`engine` for read-modify-write transactions that other processes may run at once.

    On SQLite its transactions start with BEGIN IMMEDIATE: the write lock is taken (or
    waited for, busy_timeout) before the first read, so no process reads a row that
    another changes before this one writes it; a deferred BEGIN that read first could
    not upgrade once another process committed (SQLITE_BUSY at once, no retry). On
    PostgreSQL nothing changes: the statements lock the rows they read
    (SELECT ... FOR UPDATE, which SQLAlchemy leaves out on SQLite).
    """
    return engine.execution_options(**{_IMMEDIATE: True})


def _alembic_config(connection: Connection) -> AlembicConfig:
    acfg = AlembicConfig()
    acfg.set_main_option("script_location", str(MIGRATIONS))
    acfg.attributes["connection"] = connection
    return acfg


def _upgrade(connection: Connection, revision: str) -> bool:
    """Upgrade to `revision`; True if any migration ran."""
    before = MigrationContext.configure(connection).get_current_revision()
    command.upgrade(_alembic_config(connection), revision)
    return MigrationContext.configure(connection).get_current_revision() != before


def _foreign_keys(connection: Connection, on: bool, check: bool = False) -> None:
    # Outside any transaction (PRAGMA foreign_keys is a no-op inside one): the readers'
    # connections run pysqlite without implicit BEGIN.
    cur = connection.connection.cursor()
    try:
        cur.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")
        if check:   # a full scan: only after migrations ran
            cur.execute("PRAGMA foreign_key_check")
            if cur.fetchall():
                raise StartupError("index database has rows whose parent is missing")
    finally:
        cur.close()


async def migrate(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the schema to `revision`, by default the newest (creates it on an empty
    database).

    On SQLite the migrations run with foreign keys off: a batch migration rebuilds a
    table by copying it and dropping the original, and dropping a parent table with
    foreign keys on would cascade to its children. They are checked before switching
    back on.

    Processes starting together on one database take turns: on SQLite under the
    writer lock file (`WriterLock`), taken before the first connection (whose WAL
    switch already needs the file to itself), on PostgreSQL under an advisory lock.
    The later ones find the schema at `revision` and change nothing.
    """
    lock = None
    try:
        lock = WriterLock.for_engine(engine)
        if lock is None:
            await _migrate(engine, revision)
        else:
            async with lock:
                await _migrate(engine, revision)
    except StartupError:
        raise
    except Exception as exc:
        # One line for the CLI: SQLAlchemy's message adds the statement and a
        # "Background on this error" line; the driver's own message says what is wrong.
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines() or [repr(exc)]
        raise StartupError(f"index database cannot be opened or upgraded: {reason[0]}") from None
    finally:
        if lock is not None:
            lock.close()


async def _migrate(engine: AsyncEngine, revision: str) -> None:
    """One upgrade on one connection (`migrate` holds the lock around it)."""
    async with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            await conn.run_sync(_foreign_keys, False)
        try:
            async with conn.begin():
                if not sqlite:
                    # Nodes starting together: one migrates, the others wait for
                    # it and then find the schema current.
                    await conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATE_LOCK})")
                changed = await conn.run_sync(_upgrade, revision)
        except BaseException:
            if sqlite:
                await conn.invalidate()   # never back to the pool with keys off
            raise
        if sqlite:
            await conn.run_sync(_foreign_keys, True, changed)


def safe_url(url: str) -> str:
    """The database URL without its password, for logs."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url
