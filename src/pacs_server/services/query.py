"""QueryService: C-FIND results and retrieve resolution over the index.

Requests arrive as `FindRequest` (built by dicom/identifiers.py). Results are pydicom
Datasets holding exactly the requested keys plus the ones PS3.4 C.4.1.1.3 asks for,
filled from index columns, computed counts, or the stored header (never from files).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag

from pacs_server.config import QueryConfig
from pacs_server.errors import InvalidQuery, TooManyMatches
from pacs_server.index.matching import ATTRS, LEVELS, VR_KIND, is_universal, matches, sql_condition
from pacs_server.index.query import column_key, stream_rows
from pacs_server.index.repository import IndexRepository, StoredRef
from pacs_server.services.ingest import decode_header

# Keys the SCP adds to every response (PS3.4 C.4.1.1.3.2, C.6.1.1.5/C.6.2.1).
_ALWAYS = {"QueryRetrieveLevel", "RetrieveAETitle", "InstanceAvailability",
           "SpecificCharacterSet"}
_COLUMN_NAME = {a: attr.column.key for a, attr in ATTRS.items()}


@dataclass(frozen=True)
class QueryKey:
    """One element of the request identifier."""

    tag: int
    keyword: str
    vr: str
    value: str                  # the matching value as text; "" = universal
    element: DataElement | None = None


@dataclass(frozen=True)
class FindRequest:
    """A C-FIND/C-MOVE/C-GET identifier, decoded."""

    model: str                  # PATIENT | STUDY (root)
    level: str                  # PATIENT | STUDY | SERIES | IMAGE
    keys: tuple[QueryKey, ...] = field(default_factory=tuple)
    combined_datetime: bool = False   # negotiated PS3.4 C.2.2.2.5.1 combined matching


class QueryService:
    """Matching and result building; `reconfigure` swaps the reloadable query section."""

    def __init__(self, repo: IndexRepository, cfg: QueryConfig, ae_title: str) -> None:
        self._repo = repo
        self._cfg = cfg
        self._ae_title = ae_title

    def reconfigure(self, cfg: QueryConfig) -> None:
        self._cfg = cfg

    def validate(self, req: FindRequest) -> None:
        """Raises InvalidQuery for a level the information model does not have."""
        if req.level not in LEVELS:
            raise InvalidQuery(f"QueryRetrieveLevel {req.level!r} is not valid")
        if req.model == "STUDY" and req.level == "PATIENT":
            raise InvalidQuery("Study Root has no PATIENT level")

    async def find(self, req: FindRequest, batch: int = 200) -> AsyncIterator[list[Dataset]]:
        """Yield response identifiers in batches as the rows stream from the index.

        Raises:
            InvalidQuery: bad level for the model.
            TooManyMatches: more than query.max_results matches (after yielding that many).
        """
        self.validate(req)
        cfg = self._cfg
        limit = cfg.max_results
        sent = 0
        async with aclosing(self._matching_rows(req, req.level, batch)) as rows_iter:
            async for rows in rows_iter:
                out = [self._response(req, row) for row in rows]
                if limit and sent + len(out) > limit:
                    if limit - sent > 0:
                        yield out[:limit - sent]
                    raise TooManyMatches(f"more than {limit} matches; refine the query")
                sent += len(out)
                yield out

    async def resolve(self, req: FindRequest) -> list[StoredRef]:
        """Every stored instance under the entities the identifier selects (C-MOVE/C-GET)."""
        self.validate(req)
        if all(is_universal(k.value) for k in req.keys if k.keyword != "QueryRetrieveLevel"):
            raise InvalidQuery("a retrieve needs at least one unique key")
        refs: list[StoredRef] = []
        async for rows in self._matching_rows(req, "IMAGE", 1000, within=req.level):
            for row in rows:
                refs.append(StoredRef(row["i_sop_instance_uid"], row["i_sop_class_uid"],
                                      row["i_transfer_syntax_uid"], row["i_path"], row["i_size"]))
        return refs

    async def _matching_rows(self, req: FindRequest, level: str, batch: int,
                             within: str | None = None) -> AsyncIterator[list[dict[str, Any]]]:
        top = LEVELS.index(within or level)
        sql, checks = [], []
        for key in req.keys:
            if key.keyword in _ALWAYS or is_universal(key.value):
                continue
            attr = ATTRS.get(key.keyword)
            if attr is not None:
                if LEVELS.index(attr.level) > top:
                    continue    # keys below the query level are not matched (C.4.1.2.1)
                cond = sql_condition(attr, key.value, self._cfg.case_sensitive_names)
                if cond is not None:
                    sql.append(cond)
            elif key.vr == "SQ":
                continue        # sequence matching is not supported: returned, not matched
            checks.append(key)
        pairs: list[tuple[QueryKey, QueryKey]] = []
        if req.combined_datetime:
            by_name = {k.keyword: k for k in checks}
            for date_kw, time_kw in _DATE_TIME_PAIRS:
                if date_kw in by_name and time_kw in by_name:
                    pairs.append((by_name[date_kw], by_name[time_kw]))
                    checks = [k for k in checks if k.keyword not in (date_kw, time_kw)]
        async with aclosing(stream_rows(self._repo.engine, level, sql, batch)) as stream:
            async for rows in stream:
                kept = [row for row in rows if self._check(row, checks, level)
                        and all(self._check_pair(row, d, t, level) for d, t in pairs)]
                if kept:
                    yield kept

    def _check(self, row: dict[str, Any], checks: list[QueryKey], level: str) -> bool:
        headers: dict[str, Dataset] = {}
        sensitive = self._cfg.case_sensitive_names
        for key in checks:
            stored, kind = _stored(row, key, level, headers)
            if not matches(stored, key.value, kind, sensitive):
                return False
        return True

    def _check_pair(self, row: dict[str, Any], date_key: QueryKey, time_key: QueryKey,
                    level: str) -> bool:
        """Combined date-time range: 20240101-20240102 with 2200-0600 means from
        2024-01-01 22:00 to 2024-01-02 06:00, not two independent ranges."""
        headers: dict[str, Dataset] = {}
        day, _ = _stored(row, date_key, level, headers)
        clock, _ = _stored(row, time_key, level, headers)
        stored = ("" if day is None else str(day)) + ("" if clock is None else str(clock))
        return matches(stored, combine_range(date_key.value, time_key.value), "datetime")

    def _response(self, req: FindRequest, row: dict[str, Any]) -> Dataset:
        ds = Dataset()
        header: Dataset | None = None
        top = LEVELS.index(req.level)
        for key in req.keys:
            if key.keyword in _ALWAYS:
                continue
            attr = ATTRS.get(key.keyword)
            if attr is not None and LEVELS.index(attr.level) <= top:
                value = row[column_key(attr.level, _COLUMN_NAME[key.keyword])]
                _put(ds, key, _column_value(value, attr.kind))
                continue
            if attr is not None:
                _put(ds, key, None)     # below the query level: returned empty
                continue
            if header is None:
                header = _header(row, req.level)
            if key.tag in header:
                elem = header[key.tag]
                ds.add(DataElement(key.tag, elem.VR, _decoded(elem.value)))
            else:
                _put(ds, key, None)
        ds.QueryRetrieveLevel = req.level
        ds.RetrieveAETitle = self._ae_title
        ds.InstanceAvailability = "ONLINE"
        if _has_non_ascii(ds):
            ds.SpecificCharacterSet = "ISO_IR 192"
        return ds


_DATE_TIME_PAIRS = (("StudyDate", "StudyTime"), ("SeriesDate", "SeriesTime"),
                    ("ContentDate", "ContentTime"), ("AcquisitionDate", "AcquisitionTime"),
                    ("PatientBirthDate", "PatientBirthTime"))


def combine_range(date_q: str, time_q: str) -> str:
    """Merge a DA and a TM matching value into one DT range (PS3.4 C.2.2.2.5.1)."""
    d_lo, _, d_hi = date_q.partition("-") if "-" in date_q else (date_q, "", date_q)
    t_lo, _, t_hi = time_q.partition("-") if "-" in time_q else (time_q, "", time_q)
    lo = d_lo + t_lo.replace(":", "") if d_lo else ""
    hi = d_hi + t_hi.replace(":", "") if d_hi else ""
    return f"{lo}-{hi}"


def _stored(row: dict[str, Any], key: QueryKey, level: str,
            headers: dict[str, Dataset]) -> tuple[Any, str]:
    """The stored value of `key` for this row and how to match it: from its index column,
    else from the level's stored header (decoded once per row, cached in `headers`)."""
    attr = ATTRS.get(key.keyword)
    if attr is not None:
        return row[column_key(attr.level, _COLUMN_NAME[key.keyword])], attr.kind
    if level not in headers:
        headers[level] = _header(row, level)
    return _text_value(headers[level], key.tag), VR_KIND.get(key.vr, "str")


def _header(row: dict[str, Any], level: str) -> Dataset:
    blob = row[column_key(level, "header")]
    if not blob:
        return Dataset()
    return decode_header(blob, row[column_key(level, "header_syntax")])


def _text_value(ds: Dataset, tag: int) -> str:
    if tag not in ds:
        return ""
    try:
        value = ds[tag].value
    except Exception:  # an undecodable stored value simply does not match
        return ""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def _column_value(value: Any, kind: str) -> Any:
    if value is None or value == "":
        return None
    if kind in ("count", "int"):
        return str(int(value))
    if kind == "multi":
        return str(value).split("\\")
    return str(value)


def _put(ds: Dataset, key: QueryKey, value: Any) -> None:
    vr = key.vr
    if vr == "SQ":
        ds.add(DataElement(key.tag, "SQ", DicomSequence([])))
        return
    ds.add(DataElement(key.tag, vr, value))


def _decoded(value: Any) -> Any:
    """A stored header value that can be re-encoded in the response's character set.

    Sequence items read from the header keep their text as raw bytes of the stored
    character set and pydicom would write those bytes unchanged; rebuilding each item
    from its decoded elements makes them plain text, encoded like the rest (ISO_IR 192).
    """
    if not isinstance(value, DicomSequence):
        return value
    items = []
    for item in value:
        clean = Dataset()
        for elem in item:             # iterating decodes with the item's character set
            if elem.tag != 0x00080005:
                clean.add(DataElement(elem.tag, elem.VR, _decoded(elem.value)))
        items.append(clean)
    return DicomSequence(items)


def _has_non_ascii(ds: Dataset) -> bool:
    for elem in ds:
        if elem.VR == "SQ":
            if any(_has_non_ascii(item) for item in elem.value or []):
                return True
        elif elem.VR in ("PN", "LO", "SH", "ST", "LT", "UT", "UC") and elem.value:
            if not str(elem.value).isascii():
                return True
    return False


def key_vr(tag: int, fallback: str) -> str:
    """The VR to answer with: the dictionary's, else what the request used."""
    try:
        vr = dictionary_VR(Tag(tag))
    except KeyError:
        return fallback or "UN"
    if " or " in vr:
        return fallback if fallback and " or " not in fallback else vr.split(" or ")[0]
    return vr
