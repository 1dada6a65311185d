"""Prepared: a constant statement of the writer's general path, compiled once per dialect.

`IndexWriter.write_general` runs nine statements for the first instance of a new study
(look the study, patient and series up, insert them, the instance, the study's sets).
Through `Connection.execute` each costs ~0.15-0.2 ms of CPU in SQLAlchemy's execution
bookkeeping (compiled-cache lookup, execution context, result set-up): ~1.6 ms of the
~7.5 ms a one-instance study cost (docs/performance.md, "Results: the general path on
the cursor"). On SQLite the SQL text, compiled once by SQLAlchemy Core for the
connection's dialect, goes to the DBAPI cursor in one call, the values through each
column type's bind processor as SQLAlchemy would convert them; a driver error is
wrapped as SQLAlchemy wraps it (`DBAPIError.instance`), so callers still see
`IntegrityError` and `OperationalError`. PostgreSQL keeps `Connection.execute`: there
a lost connection must invalidate the pooled one, which SQLAlchemy's own execution does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Executable
from sqlalchemy.sql.compiler import SQLCompiler

_Compiled = tuple[str, tuple[str, ...], tuple[Any, ...]]


class Prepared:
    """`statement` (named bind parameters only, no expanding IN) on a sync Connection."""

    def __init__(self, statement: Executable) -> None:
        self._statement = statement
        self._compiled: dict[Dialect, _Compiled] = {}

    def rows(self, conn: Connection, params: Mapping[str, Any]) -> list[Sequence[Any]]:
        """All result rows (tuples), e.g. of a SELECT or an INSERT ... RETURNING."""
        if conn.dialect.name != "sqlite":
            return list(conn.execute(self._statement, params))
        return _on_cursor(conn, self._for(conn.dialect)[0],
                          self._values(conn.dialect, params))

    def first(self, conn: Connection, params: Mapping[str, Any]) -> Sequence[Any] | None:
        """The first result row, or None."""
        found = self.rows(conn, params)
        return found[0] if found else None

    def execute_many(self, conn: Connection, params: Sequence[Mapping[str, Any]]) -> None:
        """The statement once per parameter set (an INSERT or UPDATE of several rows)."""
        if not params:
            return
        if conn.dialect.name != "sqlite":
            conn.execute(self._statement, list(params))
            return
        _on_cursor(conn, self._for(conn.dialect)[0],
                   [self._values(conn.dialect, p) for p in params], many=True)

    def _for(self, dialect: Dialect) -> _Compiled:
        compiled = self._compiled.get(dialect)
        if compiled is None:
            sql = cast(SQLCompiler, self._statement.compile(dialect=dialect))  # type: ignore[attr-defined]
            if not sql.positional:
                raise RuntimeError(f"{dialect.name}: the statement is not positional")
            names = tuple(sql.positiontup or ())
            processors = tuple(
                sql.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
                for name in names)
            compiled = self._compiled[dialect] = (str(sql), names, processors)
        return compiled

    def _values(self, dialect: Dialect, params: Mapping[str, Any]) -> list[Any]:
        """`params` in statement order, through the columns' bind processors."""
        _, names, processors = self._for(dialect)
        values = []
        for name, proc in zip(names, processors, strict=True):
            value = params[name]
            values.append(value if proc is None or value is None else proc(value))
        return values


class PreparedInsert(Prepared):
    """INSERT of one row into `table`, every column but the key bound (a column left out
    of the row takes its scalar default, else NULL); `returning` adds RETURNING pk."""

    def __init__(self, table: Table, returning: bool = False) -> None:
        columns = [c for c in table.columns if not c.primary_key]
        # Bound as v_<column>: SQLAlchemy reserves the column's own name in VALUES.
        stmt = insert(table).values({c.name: bindparam(f"v_{c.name}", type_=c.type)
                                     for c in columns})
        super().__init__(stmt.returning(table.c.pk) if returning else stmt)
        self._defaults = tuple(
            (c.name, f"v_{c.name}",
             c.default.arg if getattr(c.default, "is_scalar", False) else None)  # type: ignore[union-attr]
            for c in columns)

    def full(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """`row`'s values under their bind names, every column, defaults filled in."""
        return {bind: row.get(name, default) for name, bind, default in self._defaults}

    def insert_pk(self, conn: Connection, row: Mapping[str, Any]) -> int:
        """Insert `row`, return its new primary key (needs `returning`)."""
        (pk,), = self.rows(conn, self.full(row))
        return int(pk)

    def insert_many(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert `rows`."""
        self.execute_many(conn, [self.full(r) for r in rows])


def _on_cursor(conn: Connection, sql: str, values: list[Any],
               many: bool = False) -> list[Sequence[Any]]:
    """`sql` on the DBAPI cursor of `conn`'s own connection, in the transaction
    `conn.begin()` opened; its rows (none for `many`). A driver error is raised as
    SQLAlchemy raises it."""
    dialect = conn.dialect
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        try:
            if many:
                cursor.executemany(sql, values)
                return []
            cursor.execute(sql, values)
            return cast(list[Sequence[Any]], cursor.fetchall())
        except dialect.loaded_dbapi.Error as exc:
            raise DBAPIError.instance(sql, values, exc, dialect.loaded_dbapi.Error,
                                      dialect=dialect) from exc
    finally:
        cursor.close()
