"""IndexReader: every read of the archive index, on the readers' engine.

`find()` is the C-FIND/C-MOVE/C-GET read path: the SQL that narrows and the Python
check that decides (`index/matching.py`) run together here, and matching rows stream in
batches as `Match` objects, so callers never see SQL or column names. One batch is in
memory at a time; closing the generator (C-CANCEL) closes its cursor and connection.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable, Sequence
from typing import Any, Protocol

from pydicom.dataset import Dataset
from sqlalchemy import ColumnElement, RowMapping, Select, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from pacs_server.index.attributes import QR_ATTRIBUTES, Attribute, AttributeTable, Kind
from pacs_server.index.headers import decode_header, header_text
from pacs_server.index.matching import (
    DATE_TIME_PAIRS,
    VR_KIND,
    combine_range,
    is_universal,
    matches,
    sql_condition,
)
from pacs_server.index.models import QR_MODELS, Base, Instance, Patient, Series, Study
from pacs_server.index.records import StoredRef


class MatchKey(Protocol):
    """One key of a request identifier (services.query.QueryKey is one)."""

    @property
    def tag(self) -> int: ...
    @property
    def keyword(self) -> str: ...
    @property
    def vr(self) -> str: ...
    @property
    def value(self) -> str: ...         # the matching value as text; "" = universal


class Match:
    """One matching entity at the query level, read through the attribute table."""

    __slots__ = ("level", "_row", "_view", "_header")

    def __init__(self, level: str, row: RowMapping,
                 view: dict[str, tuple[str, Attribute]]) -> None:
        self.level = level
        self._row = row
        self._view = view
        self._header: Dataset | None = None

    def indexed(self, keyword: str) -> tuple[Any, Kind] | None:
        """Stored value and match kind of an attribute indexed at or above the level,
        or None (the attribute is not indexed, or only below this level)."""
        found = self._view.get(keyword)
        if found is None:
            return None
        label, attr = found
        return self._row[label], attr.kind

    def header(self) -> Dataset:
        """The level's stored header, decoded once."""
        if self._header is None:
            self._header = decode_header(self._row["h_header"], self._row["h_header_syntax"])
        return self._header

    def value(self, key: MatchKey) -> tuple[Any, Kind]:
        """What `key` is matched against: its column, else the stored header."""
        found = self.indexed(key.keyword)
        if found is not None:
            return found
        return header_text(self.header(), key.tag), VR_KIND.get(key.vr, "str")

    @property
    def ref(self) -> StoredRef:
        """Where the instance lives (IMAGE level only)."""
        row = self._row
        return StoredRef(row["r_sop_instance_uid"], row["r_sop_class_uid"],
                         row["r_transfer_syntax_uid"], row["r_path"], row["r_size"])


class IndexReader:
    """Reads of the Q/R index; one per process, sharing the readers' engine."""

    def __init__(self, engine: AsyncEngine, table: AttributeTable = QR_ATTRIBUTES,
                 models: dict[str, type[Base]] = QR_MODELS) -> None:
        self._engine = engine
        self._table = table
        self._models = models

    async def find(self, level: str, keys: Iterable[MatchKey], *, within: str | None = None,
                   case_sensitive_names: bool = False, combined_datetime: bool = False,
                   batch: int = 200, refs_only: bool = False) -> AsyncGenerator[list[Match], None]:
        """Entities at `level` matching every key (PS3.4 C.2.2.2), in batches.

        Args:
            within: match the keys as a query at this level would (retrieve: rows at
                IMAGE level under the STUDY the keys select); default `level`.
            combined_datetime: date and time keys form one range (C.2.2.2.5.1).
            refs_only: the caller reads only `Match.ref` (a retrieve): unless a key is
                matched against the stored header, the rows carry nothing else (the
                attributes of every level and the header of each instance were ~2/3
                of a 500-instance C-MOVE's index read).
        """
        view = self._view(level, within or level)
        visible = self._table.visible(within or level)
        conditions, checks = [], []
        for key in keys:
            if is_universal(key.value):
                continue
            attr = visible.get(key.keyword)
            if attr is not None:
                cond = sql_condition(self._column(attr), attr.kind, key.value,
                                     self._column(attr, attr.norm) if attr.norm else None)
                if cond is not None:
                    conditions.append(cond)
            elif self._table.indexed(key.keyword):
                continue    # keys below the query level are not matched (C.4.1.2.1)
            elif key.vr == "SQ":
                continue    # sequence matching is not supported: returned, not matched
            checks.append(key)
        pairs: list[tuple[MatchKey, MatchKey]] = []
        if combined_datetime:
            by_name = {k.keyword: k for k in checks}
            for date_kw, time_kw in DATE_TIME_PAIRS:
                if date_kw in by_name and time_kw in by_name:
                    pairs.append((by_name[date_kw], by_name[time_kw]))
                    checks = [k for k in checks if k.keyword not in (date_kw, time_kw)]
        bare = refs_only and not checks and not pairs
        if bare:
            view = {}
        stmt = self._select(level, view, conditions, header=not bare)
        async with self._engine.connect() as conn:
            result = await conn.stream(stmt.execution_options(yield_per=batch))
            async for partition in result.mappings().partitions(batch):
                kept = []
                for row in partition:
                    found = Match(level, row, view)
                    if (all(_check(found, k, case_sensitive_names) for k in checks)
                            and all(_check_pair(found, d, t) for d, t in pairs)):
                        kept.append(found)
                if kept:
                    yield kept

    def _column(self, attr: Attribute, name: str | None = None) -> ColumnElement[Any]:
        return self._models[attr.level].__table__.c[name or attr.column]

    def _view(self, level: str, within: str) -> dict[str, tuple[str, Attribute]]:
        return {kw: (f"a{self._table.depth(a.level)}_{a.column}", a)
                for kw, a in self._table.visible(within).items()}

    def _select(self, level: str, view: dict[str, tuple[str, Attribute]],
                conditions: Sequence[ColumnElement[bool]], header: bool = True) -> Select[Any]:
        """Joined SELECT of the `view` attributes, the level's header (unless not
        `header`) and, at the deepest level, where the instance is; filtered, in
        insertion order."""
        levels = self._table.levels
        depth = self._table.depth(level)
        model = self._models[level]
        columns: list[Any] = [self._column(a).label(label) for label, a in view.values()]
        if header:
            columns += [model.__table__.c.header.label("h_header"),
                        model.__table__.c.header_syntax.label("h_header_syntax")]
        if level == levels[-1]:
            columns += [model.__table__.c[n].label(f"r_{n}") for n in (
                "sop_instance_uid", "sop_class_uid", "transfer_syntax_uid", "path", "size")]
        stmt = select(*columns).select_from(model)
        for child_level, parent_level in zip(reversed(levels[1:depth + 1]),
                                             reversed(levels[:depth]), strict=True):
            child = self._models[child_level].__table__
            parent = self._models[parent_level].__table__
            (fk,) = (fk for fk in child.foreign_keys if fk.column.table is parent)
            stmt = stmt.join(parent, fk.parent == fk.column)
        for cond in conditions:
            stmt = stmt.where(cond)
        return stmt.order_by(model.__table__.c.pk)

    async def instance_path(self, sop_instance_uid: str) -> str | None:
        """Relative path of an indexed instance, or None."""
        async with self._engine.connect() as conn:
            return (await conn.execute(select(Instance.path).where(
                Instance.sop_instance_uid == sop_instance_uid))).scalar()

    async def series_version(self, study_uid: str, series_uid: str) -> tuple[int, int]:
        """(instances, newest instance row id) of a series of a study: (0, 0) when it has
        none. Any store, replacement or removal in the series changes it (a replacement
        is a new row), so derived data of the series can be keyed by it."""
        stmt = (select(func.count(Instance.pk), func.coalesce(func.max(Instance.pk), 0))
                .join(Series, Instance.series_pk == Series.pk)
                .join(Study, Series.study_pk == Study.pk)
                .where(Series.series_instance_uid == series_uid,
                       Study.study_instance_uid == study_uid))
        async with self._engine.connect() as conn:
            count, newest = (await conn.execute(stmt)).one()
        return int(count), int(newest)

    async def counts(self) -> dict[str, int]:
        """Rows per level, for start-up logs and store_scp's summary."""
        async with self._engine.connect() as conn:
            out = {}
            for name, model in (("patients", Patient), ("studies", Study),
                                ("series", Series), ("instances", Instance)):
                out[name] = int((await conn.execute(
                    select(func.count()).select_from(model))).scalar() or 0)
            out["bytes"] = int((await conn.execute(
                select(func.coalesce(func.sum(Instance.size), 0)))).scalar() or 0)
            return out

    async def refs(self, sop_instance_uids: Iterable[str]) -> list[StoredRef]:
        """Stored locations for the given instances (missing UIDs are left out)."""
        uids = list(sop_instance_uids)
        out: list[StoredRef] = []
        async with self._engine.connect() as conn:
            for i in range(0, len(uids), 500):
                rows = await conn.execute(select(
                    Instance.sop_instance_uid, Instance.sop_class_uid,
                    Instance.transfer_syntax_uid, Instance.path, Instance.size).where(
                    Instance.sop_instance_uid.in_(uids[i:i + 500])))
                out.extend(StoredRef(*r) for r in rows)
        return out


def _check(found: Match, key: MatchKey, case_sensitive_names: bool) -> bool:
    stored, kind = found.value(key)
    return matches(stored, key.value, kind, case_sensitive_names)


def _check_pair(found: Match, date_key: MatchKey, time_key: MatchKey) -> bool:
    """Combined date-time range: 20240101-20240102 with 2200-0600 means from
    2024-01-01 22:00 to 2024-01-02 06:00, not two independent ranges."""
    day, _ = found.value(date_key)
    clock, _ = found.value(time_key)
    stored = ("" if day is None else str(day)) + ("" if clock is None else str(clock))
    return matches(stored, combine_range(date_key.value, time_key.value), "datetime")
