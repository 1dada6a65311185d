"""Worklist items to import: JSON objects and DICOM worklist files, checked value by value.

JSON keys are DICOM keywords in any case (`patientId` is PatientID,
`scheduledStationAeTitle` is ScheduledStationAETitle). Keys of the Scheduled Procedure
Step (PS3.4 Table K.6-1: Modality, ScheduledStationAETitle, ...) written at the top
level go into the item's Scheduled Procedure Step Sequence; the sequence may also be
given as such (`"ScheduledProcedureStepSequence": [{...}]`). DICOM files are what dcmtk's
`wlmscpfs` serves (`.wl`, `.dcm`); a directory imports every such file in it.

Every refusal is an `InvalidWorklistItem` whose message names the item (its index in
the file, 1-based, or its file) and the field.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from datetime import datetime
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import config as dicom_config
from pydicom import dcmread
from pydicom.datadict import dictionary_VR, keyword_dict, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid
from pydicom.valuerep import PersonName, validate_value

from pacs_server.errors import InvalidWorklistItem

SPS = "ScheduledProcedureStepSequence"
# Attributes of a Scheduled Procedure Step Sequence item (PS3.4 Table K.6-1).
SPS_KEYWORDS = frozenset({
    "Modality", "ScheduledStationAETitle", "ScheduledStationName",
    "ScheduledProcedureStepLocation", "ScheduledProcedureStepStartDate",
    "ScheduledProcedureStepStartTime", "ScheduledProcedureStepEndDate",
    "ScheduledProcedureStepEndTime", "ScheduledPerformingPhysicianName",
    "ScheduledPerformingPhysicianIdentificationSequence",
    "ScheduledProcedureStepDescription", "ScheduledProtocolCodeSequence",
    "ScheduledProcedureStepID", "ScheduledProcedureStepStatus",
    "CommentsOnTheScheduledProcedureStep", "PreMedication", "RequestedContrastAgent",
    "ScheduledProcedureStepModificationDateTime",
})
WORKLIST_SUFFIXES = (".wl", ".dcm")
_BY_LOWER = {kw.lower(): kw for kw in keyword_dict}
_SKIP_TAGS = {0x00080005}    # SpecificCharacterSet: values are kept decoded


def load_items(source: str) -> list[tuple[str, Dataset]]:
    """The items of a JSON file, a DICOM worklist file, a directory of them, or stdin ("-").

    Returns (where, dataset) pairs, `where` naming the item in messages.
    """
    if source == "-":
        data = sys.stdin.buffer.read()
        return _from_bytes(data, "<stdin>")
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*")
                       if p.is_file() and p.suffix.lower() in WORKLIST_SUFFIXES)
        if not files:
            raise InvalidWorklistItem(f"{source}: no .wl or .dcm files in this directory")
        return [(str(p), check_item(_read_dicom(p.read_bytes(), str(p)), str(p)))
                for p in files]
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidWorklistItem(f"{source}: cannot read: {exc.strerror or exc}") from None
    return _from_bytes(data, source)


def _from_bytes(data: bytes, source: str) -> list[tuple[str, Dataset]]:
    if data.lstrip()[:1] in (b"{", b"["):
        return items_from_json(data, source)
    return [(source, check_item(_read_dicom(data, source), source))]


def _read_dicom(data: bytes, source: str) -> Dataset:
    try:
        ds = dcmread(BytesIO(data), force=True)
        ds.decode()
    except (InvalidDicomError, ValueError, TypeError, EOFError, LookupError) as exc:
        raise InvalidWorklistItem(f"{source}: not a DICOM worklist file: {exc}") from None
    if len(ds) == 0:
        raise InvalidWorklistItem(f"{source}: not a JSON or DICOM worklist file")
    return ds


def items_from_json(data: bytes | str, source: str) -> list[tuple[str, Dataset]]:
    """Parse one JSON object or a list of them into checked datasets."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidWorklistItem(f"{source}: not valid JSON: {exc}") from None
    objects = doc if isinstance(doc, list) else [doc]
    if not objects:
        raise InvalidWorklistItem(f"{source}: the list holds no items")
    out = []
    for i, obj in enumerate(objects, 1):
        where = f"{source}: item {i}"
        if not isinstance(obj, dict):
            raise InvalidWorklistItem(f"{where}: expected an object, got {type(obj).__name__}")
        out.append((where, check_item(_dataset_from_json(obj, where, top=True), where)))
    return out


def _dataset_from_json(obj: dict[str, Any], where: str, top: bool) -> Dataset:
    ds = Dataset()
    step = Dataset()
    for key, value in obj.items():
        keyword = _BY_LOWER.get(str(key).lower())
        if keyword is None:
            raise InvalidWorklistItem(f"{where}: {key}: unknown attribute keyword")
        elem = _element(keyword, value, f"{where}: {key}")
        (step if top and keyword in SPS_KEYWORDS else ds).add(elem)
    if top and len(step):
        items = ds[SPS].value if SPS in ds else DicomSequence([Dataset()])
        if len(items) != 1:
            raise InvalidWorklistItem(f"{where}: {SPS}: step keys at the top level need "
                                      "exactly one sequence item to go into")
        for elem in step:
            items[0].add(elem)
        setattr(ds, SPS, items)
    return ds


def _element(keyword: str, value: Any, where: str) -> DataElement:
    tag = tag_for_keyword(keyword)
    assert tag is not None
    vr = dictionary_VR(tag).split(" or ")[0]
    if vr == "SQ":
        objects = value if isinstance(value, list) else [value]
        if not all(isinstance(o, dict) for o in objects):
            raise InvalidWorklistItem(f"{where}: a sequence is a list of objects")
        return DataElement(tag, "SQ", DicomSequence(
            [_dataset_from_json(o, f"{where}[{i}]", top=False) for i, o in enumerate(objects)]))
    values = value if isinstance(value, list) else [value]
    converted = [_scalar(vr, v, where) for v in values]
    for v in converted:
        if v != "":
            _check_value(vr, v, where)   # before pydicom would only warn about it
    if value is None or value == "":
        return DataElement(tag, vr, None)
    return DataElement(tag, vr, converted if len(converted) > 1 else converted[0])


def _scalar(vr: str, value: Any, where: str) -> Any:
    if vr == "PN" and isinstance(value, dict):
        groups = [str(value.get(g, "")) for g in ("Alphabetic", "Ideographic", "Phonetic")]
        return "=".join(groups).rstrip("=")
    if isinstance(value, bool) or isinstance(value, (dict, list)):
        raise InvalidWorklistItem(f"{where}: expected a text or number value")
    if vr in ("US", "UL", "SS", "SL", "UV", "SV"):
        if not isinstance(value, int):
            raise InvalidWorklistItem(f"{where}: expected an integer for VR {vr}")
        return value
    if vr in ("FL", "FD"):
        if not isinstance(value, (int, float)):
            raise InvalidWorklistItem(f"{where}: expected a number for VR {vr}")
        return float(value)
    return "" if value is None else str(value)


def check_item(ds: Dataset, where: str) -> Dataset:
    """The item, checked and completed (a StudyInstanceUID generated when missing).

    Raises:
        InvalidWorklistItem: a required attribute missing, a value invalid for its VR
            (length, characters, a date or time that does not exist), or more than one
            scheduled step.
    """
    clean = _checked(ds, where)
    if not str(clean.get("PatientID", "") or "").strip():
        raise InvalidWorklistItem(f"{where}: PatientID: missing (required)")
    steps = clean.get(SPS)
    if not steps:
        raise InvalidWorklistItem(f"{where}: ScheduledProcedureStepStartDate: missing "
                                  "(required)")
    if len(steps) != 1:
        raise InvalidWorklistItem(f"{where}: {SPS}: needs exactly one item (one worklist "
                                  "item per scheduled procedure step)")
    if not str(steps[0].get("ScheduledProcedureStepStartDate", "") or "").strip():
        raise InvalidWorklistItem(f"{where}: ScheduledProcedureStepStartDate: missing "
                                  "(required)")
    if not str(clean.get("StudyInstanceUID", "") or "").strip():
        clean.StudyInstanceUID = generate_uid()
    return clean


def _checked(ds: Dataset, where: str) -> Dataset:
    """A copy with decoded values, without file meta and character set, each value
    checked against its VR."""
    out = Dataset()
    for elem in ds:
        if elem.tag.group in (0x0000, 0x0002) or elem.tag in _SKIP_TAGS:
            continue
        name = elem.keyword or str(elem.tag)
        if elem.VR == "SQ":
            items = DicomSequence([_checked(item, f"{where}: {name}[{i}]")
                                   for i, item in enumerate(elem.value or [])])
            out.add(DataElement(elem.tag, "SQ", items))
            continue
        for value in _values(elem.value):
            _check_value(elem.VR, value, f"{where}: {name}")
        out.add(DataElement(elem.tag, elem.VR, elem.value))
    return out


def _values(value: Any) -> Iterable[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return list(value)
    return [value]


def _check_value(vr: str, value: Any, where: str) -> None:
    if isinstance(value, PersonName):
        value = str(value)
    try:
        validate_value(vr, value, dicom_config.RAISE)
    except (ValueError, TypeError) as exc:
        reason = str(exc).split(" Please see", 1)[0]
        raise InvalidWorklistItem(f"{where}: {reason}") from None
    if vr == "DA" and isinstance(value, str) and value:
        try:
            datetime.strptime(value.strip(), "%Y%m%d")
        except ValueError:
            raise InvalidWorklistItem(f"{where}: {value!r} is not a date (YYYYMMDD)") from None
