"""QIDO-RS (PS3.18 10.6) as a C-FIND: query parameters → `FindRequest` → `QueryService`.

The matching is the C-FIND matching (`QueryService.find`, `index/matching.py`); this
module only translates: attribute names or hex tags into keys, DICOMweb value syntax
into DICOM's (a comma-separated UID list becomes a backslash-separated one), the default
return attributes of PS3.18 Table 6.7.1-2/2a/2b plus `includefield`, and `limit` /
`offset` applied while the matches stream.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import aclosing
from dataclasses import dataclass

from pydicom.datadict import dictionary_keyword, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset

from pacs_server.errors import InvalidQuery, TooManyMatches
from pacs_server.index.attributes import QR_ATTRIBUTES
from pacs_server.services.query import FindRequest, QueryKey, QueryService, key_vr
from pacs_server.values import is_uid

RESOURCE_LEVELS = {"studies": "STUDY", "series": "SERIES", "instances": "IMAGE"}

# PS3.18 Table 6.7.1-2 (study), 2a (series), 2b (instance): returned by default.
# Timezone Offset From UTC comes from the stored header when the instance has it.
STUDY_DEFAULT = ("SpecificCharacterSet", "StudyDate", "StudyTime", "AccessionNumber",
                 "InstanceAvailability", "ModalitiesInStudy", "ReferringPhysicianName",
                 "TimezoneOffsetFromUTC", "PatientName", "PatientID", "PatientBirthDate",
                 "PatientSex", "StudyInstanceUID", "StudyID", "StudyDescription",
                 "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")
SERIES_DEFAULT = ("SpecificCharacterSet", "Modality", "TimezoneOffsetFromUTC",
                  "SeriesDescription", "SeriesInstanceUID", "SeriesNumber",
                  "NumberOfSeriesRelatedInstances", "PerformedProcedureStepStartDate",
                  "PerformedProcedureStepStartTime", "StudyInstanceUID")
INSTANCE_DEFAULT = ("SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID",
                    "InstanceAvailability", "TimezoneOffsetFromUTC", "InstanceNumber",
                    "Rows", "Columns", "BitsAllocated", "NumberOfFrames",
                    "StudyInstanceUID", "SeriesInstanceUID")
# Parameters of PS3.18 8.3.4 that are not attribute filters.
CONTROL_PARAMS = {"limit", "offset", "includefield", "fuzzymatching"}
_TAG_HEX = frozenset("0123456789abcdefABCDEF")


@dataclass(frozen=True)
class QidoRequest:
    """One QIDO-RS search, checked."""

    level: str                      # STUDY | SERIES | IMAGE
    keys: tuple[QueryKey, ...]
    limit: int
    offset: int
    fuzzy: bool


def parse_tag(name: str) -> int:
    """A QIDO attribute name: a keyword or eight hex digits (`00100020`).

    Raises:
        InvalidQuery: neither (sequence paths such as `a.b` are not supported).
    """
    if len(name) == 8 and set(name) <= _TAG_HEX:
        return int(name, 16)
    tag = tag_for_keyword(name)
    if tag is None:
        raise InvalidQuery(f"unknown attribute {name!r} (a keyword or 8 hex digits)")
    return int(tag)


def _keyword(tag: int) -> str:
    try:
        return keyword_for_tag(tag) or dictionary_keyword(tag)
    except KeyError:
        return ""


def _count(params: dict[str, list[str]], name: str, default: int) -> int:
    values = params.get(name)
    if not values:
        return default
    try:
        number = int(values[-1])
    except ValueError:
        raise InvalidQuery(f"{name}: {values[-1]!r} is not a number") from None
    if number < 0:
        raise InvalidQuery(f"{name}: must not be negative")
    return number


def build(resource: str, params: dict[str, list[str]], scope: dict[str, str],
          max_results: int) -> QidoRequest:
    """The search for `resource` (studies | series | instances) under `scope` (the
    UIDs of the path: StudyInstanceUID, SeriesInstanceUID), from the decoded query.

    Raises:
        InvalidQuery: an unknown attribute or parameter value (400).
    """
    level = RESOURCE_LEVELS[resource]
    requested: dict[int, str] = {}
    defaults = {"STUDY": STUDY_DEFAULT, "SERIES": SERIES_DEFAULT,
                "IMAGE": INSTANCE_DEFAULT}[level]
    wanted = list(defaults)
    # Not scoped to a study (or series): the parent levels' defaults too (PS3.18 10.6.3.3).
    if level != "STUDY" and "StudyInstanceUID" not in scope:
        wanted += STUDY_DEFAULT
    if level == "IMAGE" and "SeriesInstanceUID" not in scope:
        wanted += SERIES_DEFAULT
    for field in _include_fields(params.get("includefield", [])):
        if field == "all":
            wanted += [a.keyword for a in QR_ATTRIBUTES.visible(level).values()]
        else:
            wanted.append(field)
    for name, values in params.items():
        if name in CONTROL_PARAMS:
            continue
        tag = parse_tag(name)
        requested[tag] = values[-1]
    for keyword, uid in scope.items():
        requested[int(tag_for_keyword(keyword) or 0)] = uid
    keys: dict[int, QueryKey] = {}
    for name in wanted:
        tag = parse_tag(name)
        keys.setdefault(tag, _key(tag, ""))
    for tag, value in requested.items():
        keys[tag] = _key(tag, value)
    fuzzy = (params.get("fuzzymatching") or ["false"])[-1].lower() == "true"
    limit = _count(params, "limit", max_results)
    return QidoRequest(level, tuple(keys.values()), min(limit, max_results),
                       _count(params, "offset", 0), fuzzy)


def _include_fields(values: Iterable[str]) -> list[str]:
    out: list[str] = []
    for value in values:
        out += [v.strip() for v in value.split(",") if v.strip()]
    return out


def _key(tag: int, value: str) -> QueryKey:
    keyword = _keyword(tag)
    vr = key_vr(tag, "UN")
    if vr == "SQ" and value:
        raise InvalidQuery(f"{keyword or f'{tag:08X}'}: sequence matching is not supported")
    text = value.strip()
    if vr == "UI" and text:
        # PS3.18 8.3.4.1: a UID list is comma-separated in a URL, backslash in DICOM.
        uids = [u.strip() for u in text.replace(",", "\\").split("\\") if u.strip()]
        for uid in uids:
            if not is_uid(uid):
                raise InvalidQuery(f"{keyword}: {uid!r} is not a UID")
        text = "\\".join(uids)
    return QueryKey(tag, keyword, vr, text)


class DicomWebQueries:
    """QIDO-RS searches over the QueryService (the C-FIND path)."""

    def __init__(self, queries: QueryService) -> None:
        self._queries = queries

    async def search(self, req: QidoRequest) -> tuple[list[Dataset], bool]:
        """The matches of one page, and whether more were left (limit, max_results).

        Raises:
            InvalidQuery: bad level or keys.
        """
        find = FindRequest(model="STUDY", level=req.level, keys=req.keys)
        out: list[Dataset] = []
        skipped = 0
        more = False
        try:
            async with aclosing(self._queries.find(find)) as batches:
                async for batch in batches:
                    for ds in batch:
                        if skipped < req.offset:
                            skipped += 1
                            continue
                        if len(out) >= req.limit:
                            more = True
                            break
                        for name in ("QueryRetrieveLevel", "RetrieveAETitle"):
                            if name in ds:
                                del ds[name]
                        out.append(ds)
                    if more:
                        break
        except TooManyMatches:
            more = True     # query.max_results cut the C-FIND stream short
        return out, more

    async def series_of(self, study_uid: str) -> list[str]:
        """The Series Instance UIDs of a study (a checked UID), in archive order."""
        keys = (QueryKey(0x0020000D, "StudyInstanceUID", "UI", study_uid),
                QueryKey(0x0020000E, "SeriesInstanceUID", "UI", ""))
        found, _ = await self.search(QidoRequest("SERIES", keys, 1 << 31, 0, False))
        return [str(ds.SeriesInstanceUID) for ds in found]
