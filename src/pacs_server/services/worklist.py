"""WorklistService: the Modality Worklist C-FIND (PS3.4 K.6.1) and worklist management.

A query is matched in two steps: the index narrows with SQL on the indexed keys
(index/worklist.py), then every candidate item is decided here against the whole
identifier, nested sequences included (PS3.4 C.2.2.2, sequence matching C.2.2.2.6),
with the matching functions of index/matching.py. Responses hold exactly the
requested keys; values come from the item's stored attribute set.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from functools import cached_property

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from pacs_server.errors import InvalidQuery
from pacs_server.index.matching import check_range, is_universal
from pacs_server.index.text import name_key
from pacs_server.index.worklist import (
    WorklistFilter,
    WorklistRepository,
    WorklistRow,
)
from pacs_server.services import answers
from pacs_server.services.worklist_items import (
    SPS_TAG,
    Item,
    Key,
    compile_query,
    elements,
    item_matches,
    load_item,
    response,
)
from pacs_server.services.worklist_items import query_text as _query_text

STATUS_TAG = 0x00400020


@dataclass(frozen=True)
class WorklistQuery:
    """A Modality Worklist identifier as received, and whether combined date-time
    matching was negotiated."""

    identifier: Dataset
    combined_datetime: bool = False

    @cached_property
    def keys(self) -> tuple[Key, ...]:
        """The identifier's keys, read once for every item they are checked against."""
        return compile_query(self.identifier)

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
        check_range(name, elem.VR, text)


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
                yield [answers.to_dataset(response(item, query.keys))
                       for _, item in pairs]

    async def find_encoded(self, query: WorklistQuery, implicit_vr: bool, batch: int = 200
                           ) -> AsyncGenerator[list[bytes], None]:
        """`find()`, each identifier already encoded in Implicit (or Explicit) VR Little
        Endian: the bytes pydicom would write for `find()`'s Dataset."""
        async with aclosing(self._matching(query, batch)) as stream:
            async for pairs in stream:
                yield [answers.encode(response(item, query.keys), implicit_vr)
                       for _, item in pairs]

    async def _matching(self, query: WorklistQuery, batch: int,
                        include_final: bool | None = None
                        ) -> AsyncGenerator[list[tuple[WorklistRow, Item]], None]:
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
                kept: list[tuple[WorklistRow, Item]] = []
                for row in part:
                    item = load_item(row.dataset)
                    if item_matches(item, query.keys, query.combined_datetime):
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
                out.extend((row, item_dataset(row)) for row, _ in pairs)
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
    """The stored item as a pydicom Dataset (to list and show it)."""
    return answers.to_dataset(elements(load_item(row.dataset)))
