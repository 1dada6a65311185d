"""WorklistService: the Modality Worklist C-FIND (PS3.4 K.6.1) and worklist management.

A query is matched in two steps: the index narrows with SQL on the indexed keys
(index/worklist.py), then every candidate item is decided here against the whole
identifier, nested sequences included (PS3.4 C.2.2.2, sequence matching C.2.2.2.6),
with the matching functions of index/matching.py. Responses hold exactly the
requested keys; values come from the item's stored attribute set.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from pydicom import config as dicom_config
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag

from pacs_server.errors import InvalidQuery
from pacs_server.index.matching import VR_KIND, combine_range, is_universal, matches
from pacs_server.index.text import name_key
from pacs_server.index.worklist import (
    WorklistFilter,
    WorklistRepository,
    WorklistRow,
)

SPS_TAG = 0x00400100
STATUS_TAG = 0x00400020
CHARSET_TAG = 0x00080005
# Not attributes of an item: the character set of the request, and a Query/Retrieve
# Level some SCUs (findscu -W -k) put into worklist identifiers.
_NOT_KEYS = {CHARSET_TAG, 0x00080052}
# Date and time keys matched as one date-time when combined matching is negotiated
# (PS3.4 C.2.2.2.5.1).
_DATE_TIME_PAIRS = ((0x00400002, 0x00400003), (0x00080020, 0x00080030))
# The Scheduled Procedure Step return keys (PS3.4 Table K.6-1) answered, zero length when
# the item has none, for a query whose sequence item is empty (as dcmtk's wlmscpfs does).
SPS_RETURN_KEYS = (0x00080060, 0x00321070, 0x00400001, 0x00400002, 0x00400003, 0x00400004,
                   0x00400005, 0x00400006, 0x00400007, 0x00400009, 0x00400010, 0x00400011,
                   0x00400012, 0x00400020, 0x00400400)
_TEXT_VRS = ("PN", "LO", "SH", "ST", "LT", "UT", "UC")
_DA = re.compile(r"(\d{8})?(-(\d{8})?)?")
_TM = re.compile(r"([\d:.]*)(-[\d:.]*)?")


@dataclass(frozen=True)
class WorklistQuery:
    """A Modality Worklist identifier as received, and whether combined date-time
    matching was negotiated."""

    identifier: Dataset
    combined_datetime: bool = False

    def step(self) -> Dataset | None:
        """The query's Scheduled Procedure Step Sequence item, if it has keys."""
        if SPS_TAG not in self.identifier:
            return None
        items = self.identifier[SPS_TAG].value or []
        return items[0] if items else None


def parse_query(identifier: Dataset | None, combined_datetime: bool = False) -> WorklistQuery:
    """Check a received identifier.

    Raises:
        InvalidQuery: no identifier, an undecodable element, a sequence key with more
            than one item (C.2.2.2.6), a date or time key that is not a value or range.
    """
    if identifier is None:
        raise InvalidQuery("the request has no identifier")
    try:
        _check_keys(identifier)
    except InvalidQuery:
        raise
    except Exception as exc:
        raise InvalidQuery(f"identifier cannot be decoded: {exc}") from None
    return WorklistQuery(identifier, combined_datetime)


def _check_keys(ds: Dataset) -> None:
    for elem in ds:
        name = elem.keyword or str(elem.tag)
        if elem.VR == "SQ":
            items = elem.value or []
            if len(items) > 1:
                raise InvalidQuery(f"{name}: more than one item")
            for item in items:
                _check_keys(item)
            continue
        text = _query_text(elem.value)
        if is_universal(text):
            continue
        pattern = {"DA": _DA, "TM": _TM}.get(elem.VR)
        if pattern is not None and not all(pattern.fullmatch(v.strip().replace(".", "")
                                                             if elem.VR == "DA" else v.strip())
                                           for v in text.split("\\")):
            raise InvalidQuery(f"{name}: {text!r} is not a {elem.VR} value or range")


class WorklistService:
    """Finds, adds, lists and removes worklist items."""

    def __init__(self, repo: WorklistRepository) -> None:
        self._repo = repo

    # ------------------------------------------------------------------ C-FIND
    async def find(self, query: WorklistQuery, batch: int = 200
                   ) -> AsyncGenerator[list[Dataset], None]:
        """Response identifiers for the items that match, in batches."""
        async with aclosing(self._matching(query, batch)) as stream:
            async for pairs in stream:
                yield [response(item, query.identifier) for _, item in pairs]

    async def _matching(self, query: WorklistQuery, batch: int,
                        include_final: bool | None = None
                        ) -> AsyncGenerator[list[tuple[WorklistRow, Dataset]], None]:
        step = query.step()
        top = {e.keyword: _query_text(e.value) for e in query.identifier
               if e.VR != "SQ" and e.keyword}
        steps = {e.keyword: _query_text(e.value) for e in (step or []) if e.VR != "SQ"
                 and e.keyword}
        if include_final is None:
            # PS3.4 K.6.1.2.2 leaves it to the SCP which steps it offers: finished ones
            # only when the query asks for that status.
            include_final = not is_universal(steps.get("ScheduledProcedureStepStatus", ""))
        flt = WorklistFilter(top=top, step=steps, include_final=include_final)
        async with aclosing(self._repo.rows(flt, batch)) as rows:
            async for part in rows:
                kept: list[tuple[WorklistRow, Dataset]] = []
                for row in part:
                    item = item_dataset(row)
                    if item_matches(item, query.identifier, query.combined_datetime):
                        kept.append((row, item))
                if kept:
                    yield kept

    # ------------------------------------------------------------------ management
    async def add(self, items: list[Dataset]) -> list[int]:
        """Store checked items (services/worklist_import.py) in one transaction."""
        return await self._repo.add([stored_form(ds) for ds in items])

    async def list(self, date: str = "", modality: str = "", station: str = "",
                   status: str = "") -> list[tuple[WorklistRow, Dataset]]:
        """Items by C-FIND matching values on the step (every status unless one is given)."""
        step = Dataset()
        for keyword, value in (("ScheduledProcedureStepStartDate", date),
                               ("Modality", modality), ("ScheduledStationAETitle", station),
                               ("ScheduledProcedureStepStatus", status)):
            if value:
                setattr(step, keyword, value)
        ident = Dataset()
        ident.ScheduledProcedureStepSequence = DicomSequence([step])
        out: list[tuple[WorklistRow, Dataset]] = []
        async with aclosing(self._matching(parse_query(ident), 500, include_final=True)
                            ) as stream:
            async for pairs in stream:
                out.extend(pairs)
        return out

    async def show(self, pk: int) -> tuple[WorklistRow, Dataset] | None:
        row = await self._repo.get(pk)
        return (row, item_dataset(row)) if row is not None else None

    async def remove(self, pk: int) -> bool:
        return await self._repo.remove(pk)


# ---------------------------------------------------------------------- stored form

def stored_form(ds: Dataset) -> tuple[dict[str, str], str]:
    """The indexed columns and the DICOM JSON of a checked item."""
    step = ds[SPS_TAG].value[0] if SPS_TAG in ds and ds[SPS_TAG].value else Dataset()

    def text(source: Dataset, keyword: str) -> str:
        return _query_text(source.get(keyword, "") or "")

    columns = {
        "patient_id": text(ds, "PatientID"),
        "patient_name": text(ds, "PatientName"),
        "patient_name_norm": name_key(text(ds, "PatientName")),
        "accession_number": text(ds, "AccessionNumber"),
        "requested_procedure_id": text(ds, "RequestedProcedureID"),
        "study_instance_uid": text(ds, "StudyInstanceUID"),
        "referring_physician_norm": name_key(text(ds, "ReferringPhysicianName")),
        "modality": text(step, "Modality"),
        "station_ae": text(step, "ScheduledStationAETitle"),
        "station_name": text(step, "ScheduledStationName"),
        "start_date": text(step, "ScheduledProcedureStepStartDate").replace(".", ""),
        "start_time": text(step, "ScheduledProcedureStepStartTime"),
        "performing_physician_norm": name_key(text(step, "ScheduledPerformingPhysicianName")),
        "sps_id": text(step, "ScheduledProcedureStepID"),
        "sps_status": text(step, "ScheduledProcedureStepStatus").upper(),
    }
    return columns, json.dumps(ds.to_json_dict(), ensure_ascii=False)


def item_dataset(row: WorklistRow) -> Dataset:
    """The stored item. Its values were checked on import, so they are not validated
    again (pydicom's from_json and validation cost more than the rest of a query)."""
    return _from_json(json.loads(row.dataset))


def _from_json(data: dict[str, Any]) -> Dataset:
    ds = Dataset()
    for key, obj in data.items():
        tag, vr = int(key, 16), obj["vr"]
        if "Value" not in obj:
            if "InlineBinary" in obj or "BulkDataURI" in obj:
                ds.add(DataElement.from_json(Dataset, key, vr, *_binary(obj)))
            else:
                ds.add(_element(tag, vr, None))
            continue
        values = obj["Value"]
        if vr == "SQ":
            ds.add(_element(tag, vr, DicomSequence([_from_json(i) for i in values])))
            continue
        if vr == "PN":
            values = ["=".join(v.get(g, "") for g in ("Alphabetic", "Ideographic",
                                                      "Phonetic")).rstrip("=")
                      if isinstance(v, dict) else v for v in values]
        ds.add(_element(tag, vr, values[0] if len(values) == 1 else values))
    return ds


def _binary(obj: dict[str, Any]) -> tuple[Any, str]:
    key = "InlineBinary" if "InlineBinary" in obj else "BulkDataURI"
    return obj[key], key


def _element(tag: int, vr: str, value: Any) -> DataElement:
    return DataElement(tag, vr, value, validation_mode=dicom_config.IGNORE)


# ---------------------------------------------------------------------- matching

def item_matches(item: Dataset, query: Dataset, combined: bool = False) -> bool:
    """Does a stored item match every key of the identifier (PS3.4 C.2.2.2)?

    A sequence key matches when one of the stored items matches all the keys of the
    query's item; a zero-length sequence or an item without keys matches anything
    (C.2.2.2.6). Person names match case-insensitively (as Q/R C-FIND by default).
    """
    pairs: set[int] = set()
    if combined:
        for date_tag, time_tag in _DATE_TIME_PAIRS:
            if date_tag in query and time_tag in query:
                day, clock = (_query_text(query[t].value) for t in (date_tag, time_tag))
                if is_universal(day) or is_universal(clock):
                    continue
                pairs.update((date_tag, time_tag))
                stored = _stored_text(item, date_tag) + _stored_text(item, time_tag)
                if not matches(stored, combine_range(day, clock), "datetime"):
                    return False
    for elem in query:
        tag = int(elem.tag)
        if tag in _NOT_KEYS or elem.tag.group == 0 or tag in pairs:
            continue
        if elem.VR == "SQ":
            wanted = elem.value[0] if elem.value else None
            if wanted is None or not _has_keys(wanted):
                continue
            stored_items = item[tag].value if tag in item and item[tag].VR == "SQ" else []
            if not any(item_matches(s, wanted, combined) for s in stored_items or []):
                return False
            continue
        value = _query_text(elem.value)
        if is_universal(value):
            continue
        kind = VR_KIND.get(elem.VR, "str")
        if not matches(_stored_text(item, tag), value, kind, case_sensitive_names=False):
            return False
    return True


def _has_keys(item: Dataset) -> bool:
    return any(e.VR == "SQ" and e.value and _has_keys(e.value[0])
               or e.VR != "SQ" and not is_universal(_query_text(e.value)) for e in item)


def response(item: Dataset, query: Dataset) -> Dataset:
    """Exactly the requested keys, valued from the item (zero length where it has none).

    A requested sequence with a zero-length value or one empty item returns the stored
    items whole (the Scheduled Procedure Step item completed with the return keys of
    Table K.6-1); otherwise each stored item with the query item's keys.
    """
    out = _pick(item, query)
    if _has_non_ascii(out):
        out.SpecificCharacterSet = "ISO_IR 192"
    return out


def _pick(item: Dataset, query: Dataset) -> Dataset:
    out = Dataset()
    for elem in query:
        tag = int(elem.tag)
        if tag in _NOT_KEYS or elem.tag.group == 0:
            continue
        stored = item[tag] if tag in item else None
        if elem.VR == "SQ":
            wanted = elem.value[0] if elem.value else None
            items = list(stored.value or []) if stored is not None and stored.VR == "SQ" else []
            if wanted is not None and len(wanted):
                items = [_pick(s, wanted) for s in items]
            elif tag == SPS_TAG:
                items = [_completed_step(s) for s in items]
            out.add(_element(tag, "SQ", DicomSequence(items)))
        elif stored is not None:
            out.add(stored)     # the item is decoded afresh for every query: no copy
        else:
            out.add(_element(tag, _vr(tag, elem.VR), None))
    return out


def _completed_step(step: Dataset) -> Dataset:
    out = Dataset()
    for elem in step:
        out.add(elem)
    for tag in SPS_RETURN_KEYS:
        if tag not in out:
            out.add(_element(tag, _vr(tag, ""), None))
    return out


def _vr(tag: int, fallback: str) -> str:
    try:
        vr = dictionary_VR(Tag(tag))
    except KeyError:
        return fallback or "UN"
    return vr.split(" or ")[0] if " or " in vr else vr


def _has_non_ascii(ds: Dataset) -> bool:
    return any(e.VR in _TEXT_VRS and e.value is not None and not str(e.value).isascii()
               for e in ds.iterall())


def _stored_text(ds: Dataset, tag: int) -> str:
    if tag not in ds:
        return ""
    return _query_text(ds[tag].value)


def _query_text(value: Any) -> str:
    if value is None or isinstance(value, bytes):
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip()
