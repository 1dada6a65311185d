"""The database browser of the admin API: filters to a C-FIND request, rows to JSON.

The same `QueryService.find` that answers C-FIND does the matching (PS3.4 C.2.2.2:
`*`/`?` wildcards in names, date ranges), so the browser and the DICOM side cannot
disagree. Filters are validated here before they become query keys.
"""

from __future__ import annotations

import re
from contextlib import aclosing
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset

from pacs_server.errors import InvalidRequest
from pacs_server.services.query import FindRequest, QueryKey, QueryService
from pacs_server.values import is_uid

LEVEL = {"patients": "PATIENT", "studies": "STUDY", "series": "SERIES", "instances": "IMAGE"}

# What each level returns (and may be filtered on).
COLUMNS = {
    "PATIENT": ("PatientID", "PatientName", "PatientBirthDate", "PatientSex",
                "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedInstances"),
    "STUDY": ("PatientID", "PatientName", "StudyInstanceUID", "StudyDate", "StudyTime",
              "AccessionNumber", "StudyDescription", "ModalitiesInStudy",
              "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"),
    "SERIES": ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "Modality",
               "SeriesNumber", "SeriesDescription", "NumberOfSeriesRelatedInstances"),
    "IMAGE": ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
              "SOPClassUID", "InstanceNumber"),
}

_DATE = re.compile(r"^(\d{8})?-?(\d{8})?$")
_CODE = re.compile(r"^[A-Za-z0-9_]{1,16}$")


def _text(name: str, value: str, limit: int = 64) -> str:
    if len(value) > limit or "\\" in value or any(ord(c) < 32 for c in value):
        raise InvalidRequest(f"{name}: at most {limit} printable characters, no backslash")
    return value


def _filters(level: str, filters: dict[str, str]) -> dict[str, str]:
    """API filter names -> (keyword, value), each value checked."""
    out: dict[str, str] = {}
    for name, value in filters.items():
        if name == "date":
            if not _DATE.match(value) or value in ("", "-"):
                raise InvalidRequest("date: YYYYMMDD, YYYYMMDD-YYYYMMDD, -YYYYMMDD or "
                                     "YYYYMMDD-")
            out["StudyDate"] = value
        elif name in ("study_uid", "series_uid"):
            if not is_uid(value):
                raise InvalidRequest(f"{name}: {value!r} is not a UID")
            out["StudyInstanceUID" if name == "study_uid" else "SeriesInstanceUID"] = value
        elif name == "modality":
            if not _CODE.match(value):
                raise InvalidRequest(f"modality: {value!r} is not a modality code")
            out["ModalitiesInStudy" if level in ("PATIENT", "STUDY") else "Modality"] = \
                value.upper()
        elif name == "patient_id":
            out["PatientID"] = _text(name, value)
        elif name == "name":
            out["PatientName"] = _text(name, value)
        elif name == "accession":
            out["AccessionNumber"] = _text(name, value, 16)
    if level == "PATIENT" and set(out) & {"StudyDate", "StudyInstanceUID",
                                          "SeriesInstanceUID", "AccessionNumber",
                                          "ModalitiesInStudy"}:
        raise InvalidRequest("patients: filter by patient_id or name only")
    return out


def _key(keyword: str, value: str) -> QueryKey:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return QueryKey(int(tag), keyword, dictionary_VR(tag), value)


def _row(ds: Dataset, columns: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for keyword in columns:
        value = ds.get(keyword)
        if value is None or value == "":
            out[keyword] = ""
        elif isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            out[keyword] = "\\".join(str(v) for v in value)
        else:
            out[keyword] = str(value)
    return out


async def browse(queries: QueryService, level_name: str, filters: dict[str, str],
                 offset: int, limit: int) -> dict[str, Any]:
    """One page of matches: `{"level", "offset", "limit", "rows", "more"}`."""
    level = LEVEL[level_name]
    matching = _filters(level, filters)
    columns = COLUMNS[level]
    keys = [_key(kw, matching.get(kw, "")) for kw in columns]
    keys += [_key(kw, v) for kw, v in matching.items() if kw not in columns]
    req = FindRequest(model="PATIENT" if level == "PATIENT" else "STUDY", level=level,
                      keys=tuple(keys))
    rows: list[dict[str, Any]] = []
    seen = 0
    more = False
    async with aclosing(queries.find(req)) as batches:
        async for batch in batches:
            for ds in batch:
                seen += 1
                if seen <= offset:
                    continue
                if len(rows) == limit:
                    more = True
                    break
                rows.append(_row(ds, columns))
            if more:
                break
    return {"level": level_name, "offset": offset, "limit": limit, "rows": rows,
            "more": more}
