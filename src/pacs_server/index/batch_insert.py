"""BatchInsert: a group commit's instance rows as one INSERT, sent through the driver.

The common write is a batch of new instances whose patient, study and series rows exist
and whose study attribute sets already hold their values: nothing to read, nothing to
update, only the instance rows (the count triggers do the rest). Sent through
SQLAlchemy's asyncio adapter, one statement costs three thread hops to aiosqlite's
connection thread (cursor, execute, close) and the commit two more, each hop a wake-up
of that thread and of the event loop; that and SQLAlchemy's per-execution bookkeeping
were ~1.6 ms of CPU per instance at one association (docs/performance.md).

Here the batch is one multi-row INSERT outside any transaction: a single statement is
atomic and, in autocommit, committed (durably, at the configured synchronous level)
before it returns, so the batch costs one call into the driver (aiosqlite: one thread
hop; asyncpg: one round trip). The SQL text is compiled once per row count by
SQLAlchemy Core for the engine's dialect (casts and placeholders included); the values
are bound parameters, converted by each column type's own bind processor.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, insert
from sqlalchemy.engine import Dialect

from pacs_server.index.models import Instance

# A batch above this many rows takes the general path: SQLite's and PostgreSQL's
# limits on bound parameters (32766 and 32767) stay far away.
MAX_ROWS = 256

_COLUMNS = tuple(c for c in Instance.__table__.columns if not c.primary_key)


class BatchInsert:
    """The instance INSERT of one engine's dialect, for 1..MAX_ROWS rows."""

    def __init__(self, dialect: Dialect) -> None:
        self._dialect = dialect
        self._names = tuple(c.name for c in _COLUMNS)
        self._processors = tuple(c.type.dialect_impl(dialect).bind_processor(dialect)
                                 for c in _COLUMNS)
        self._asyncpg = dialect.driver == "asyncpg"
        self._sql: dict[int, str] = {}

    def statement(self, rows: int) -> str:
        """The SQL text for `rows` rows, compiled on first use."""
        sql = self._sql.get(rows)
        if sql is None:
            stmt = insert(Instance).values([
                {c.name: bindparam(f"r{i}_{j}") for j, c in enumerate(_COLUMNS)}
                for i in range(rows)])
            compiled = stmt.compile(dialect=self._dialect)
            expected = [f"r{i}_{j}" for i in range(rows) for j in range(len(_COLUMNS))]
            if not compiled.positional or list(compiled.positiontup or ()) != expected:
                raise RuntimeError(f"{self._dialect.name}: unexpected parameter order")
            sql = self._sql[rows] = str(compiled)
        return sql

    def parameters(self, rows: list[dict[str, Any]]) -> list[Any]:
        """The rows' values in statement order, through the columns' bind processors."""
        out: list[Any] = []
        for row in rows:
            for name, proc in zip(self._names, self._processors, strict=True):
                value = row[name]
                out.append(value if proc is None or value is None else proc(value))
        return out

    async def execute(self, driver_connection: Any, rows: list[dict[str, Any]]) -> None:
        """Insert `rows` in one autocommitted statement on the driver's connection.

        The connection must be outside any transaction (SQLite: isolation_level None).
        Raises the driver's own exception on failure; nothing is then written.
        """
        sql, params = self.statement(len(rows)), self.parameters(rows)
        if self._asyncpg:
            await driver_connection.execute(sql, *params)
        else:
            # aiosqlite: one call in its thread, the cursor closed there too.
            await driver_connection.execute_fetchall(sql, params)
