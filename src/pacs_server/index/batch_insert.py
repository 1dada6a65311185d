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

The first instances of a new series of a known study (`with_new_series`) take one
transaction on the driver: BEGIN (IMMEDIATE on SQLite), one INSERT ... RETURNING pk per
new series, the instances' INSERT, COMMIT: four calls into the driver instead of about
seventeen thread hops through SQLAlchemy's adapter (~1.5 ms of CPU once per series).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert
from sqlalchemy.engine import Dialect

from pacs_server.index.models import Instance, Series

# A batch above this many rows takes the general path: SQLite's and PostgreSQL's
# limits on bound parameters (32766 and 32767) stay far away.
MAX_ROWS = 256


class _RowsInsert:
    """The INSERT of 1..n rows into one table, compiled once per row count."""

    def __init__(self, dialect: Dialect, table: Table, returning: bool = False) -> None:
        self._dialect = dialect
        self._table = table
        self._returning = returning
        self._columns = tuple(c for c in table.columns if not c.primary_key)
        self.names = tuple(c.name for c in self._columns)
        self._processors = tuple(c.type.dialect_impl(dialect).bind_processor(dialect)
                                 for c in self._columns)
        self._sql: dict[int, str] = {}

    def statement(self, rows: int) -> str:
        """The SQL text for `rows` rows, compiled on first use."""
        sql = self._sql.get(rows)
        if sql is None:
            stmt = insert(self._table).values([
                {c.name: bindparam(f"r{i}_{j}") for j, c in enumerate(self._columns)}
                for i in range(rows)])
            if self._returning:
                stmt = stmt.returning(self._table.c.pk)
            compiled = stmt.compile(dialect=self._dialect)
            expected = [f"r{i}_{j}" for i in range(rows) for j in range(len(self._columns))]
            if not compiled.positional or list(compiled.positiontup or ()) != expected:
                raise RuntimeError(f"{self._dialect.name}: unexpected parameter order")
            sql = self._sql[rows] = str(compiled)
        return sql

    def parameters(self, rows: list[dict[str, Any]]) -> list[Any]:
        """The rows' values in statement order, through the columns' bind processors."""
        out: list[Any] = []
        for row in rows:
            for name, proc in zip(self.names, self._processors, strict=True):
                value = row[name]
                out.append(value if proc is None or value is None else proc(value))
        return out


class BatchInsert:
    """The instance INSERT of one engine's dialect, for 1..MAX_ROWS rows (and the series
    INSERT of `with_new_series`)."""

    def __init__(self, dialect: Dialect) -> None:
        self._instances = _RowsInsert(dialect, cast(Table, Instance.__table__))
        self._series = _RowsInsert(dialect, cast(Table, Series.__table__), returning=True)
        self._asyncpg = dialect.driver == "asyncpg"

    def statement(self, rows: int) -> str:
        """The instances' SQL text for `rows` rows, compiled on first use."""
        return self._instances.statement(rows)

    def parameters(self, rows: list[dict[str, Any]]) -> list[Any]:
        """The instance rows' values in statement order (bind processors applied)."""
        return self._instances.parameters(rows)

    async def execute(self, driver_connection: Any, rows: list[dict[str, Any]]) -> None:
        """Insert `rows` in one autocommitted statement on the driver's connection.

        The connection must be outside any transaction (SQLite: isolation_level None).
        Raises the driver's own exception on failure; nothing is then written.
        """
        await self._run(driver_connection, self._instances, rows)

    async def with_new_series(self, driver_connection: Any, series: list[dict[str, Any]],
                              rows: Callable[[list[int]], list[dict[str, Any]]]) -> list[int]:
        """Insert the `series` rows and then the instance rows `rows(series pks)`, in one
        transaction on the driver's connection; returns the new series' primary keys.

        Same conditions as `execute`. Raises the driver's own exception on failure,
        after a rollback: nothing is then written.
        """
        if self._asyncpg:
            if driver_connection.is_in_transaction():
                raise RuntimeError("the connection is in a transaction")
            async with driver_connection.transaction():
                pks = [await driver_connection.fetchval(
                    self._series.statement(1), *self._series.parameters([row]))
                    for row in series]
                await self._run(driver_connection, self._instances, rows(pks))
            return pks
        # SQLite: the write lock taken before anything is written, as the general
        # path's BEGIN IMMEDIATE does.
        try:
            await driver_connection.execute_fetchall("BEGIN IMMEDIATE")
            pks = []
            for row in series:
                (pk,), = await driver_connection.execute_fetchall(
                    self._series.statement(1), self._series.parameters([row]))
                pks.append(int(pk))
            await self._run(driver_connection, self._instances, rows(pks))
            await driver_connection.execute_fetchall("COMMIT")
        except BaseException:
            # Nothing to roll back if BEGIN failed: that error is not the one to raise.
            with contextlib.suppress(Exception):
                await driver_connection.execute_fetchall("ROLLBACK")
            raise
        return pks

    async def _run(self, driver_connection: Any, table: _RowsInsert,
                   rows: list[dict[str, Any]]) -> None:
        sql, params = table.statement(len(rows)), table.parameters(rows)
        if self._asyncpg:
            await driver_connection.execute(sql, *params)
        else:
            # aiosqlite: one call in its thread, the cursor closed there too.
            await driver_connection.execute_fetchall(sql, params)
