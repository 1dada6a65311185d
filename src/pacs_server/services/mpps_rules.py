"""The attribute rules of the MPPS SOP Class (PS3.4 F.7.2, Table F.7.2-1).

Pure functions over pydicom datasets, no I/O: what an N-CREATE must carry, which
attributes an N-SET may change, and what a step needs before it is COMPLETED or
DISCONTINUED. Each raises the `PacsError` whose status PS3.7 C.5 defines.

Enforced, with the reason for the choices the standard leaves open:

- N-CREATE: every Type 1 attribute of the N-CREATE column (SCP requirement), nested
  ones included; Performed Procedure Step Status IN PROGRESS (F.7.2.1.3). Type 2
  attributes are not required: modalities in the field omit some of them, and a
  refused N-CREATE loses the whole step.
- N-SET: the attributes marked "Not allowed" in the N-SET column are refused; anything
  else is accepted (the table ends with "all other attributes", and modalities still
  send the retired Radiation Dose attributes).
- Final state (F.7.2.2.2 and Table F.7.2-1 Notes 1 and 2): End Date and End Time, and a
  Performed Series Sequence with at least one item, each with its Type 1 attributes.
  DISCONTINUED tolerates an empty Performed Series Sequence: a step stopped before the
  first acquisition has no series, and refusing the DISCONTINUED would leave the
  worklist item STARTED for ever.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pydicom import config as pydicom_config
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag
from pydicom.valuerep import validate_value

from pacs_server.errors import (
    AttributeNotAllowed,
    InvalidAttributeValue,
    MissingAttribute,
    MissingAttributeValue,
)

IN_PROGRESS = "IN PROGRESS"
COMPLETED = "COMPLETED"
DISCONTINUED = "DISCONTINUED"
STATUSES = (IN_PROGRESS, COMPLETED, DISCONTINUED)
FINAL = (COMPLETED, DISCONTINUED)

_REFERENCE = ("ReferencedSOPClassUID", "ReferencedSOPInstanceUID")


def _tag(keyword: str) -> BaseTag:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword   # the keywords here are pydicom's own
    return Tag(tag)


@dataclass(frozen=True)
class Rule:
    """Type 1 attributes of a dataset (or of each item of its sequences)."""

    required: tuple[str, ...] = ()
    items: tuple[tuple[str, Rule], ...] = ()   # (sequence keyword, rule for its items)


# The series the step produced; the same Type 1 rules at N-CREATE, N-SET and final.
_SERIES = Rule(("ProtocolName", "SeriesInstanceUID"), (
    ("ReferencedImageSequence", Rule(_REFERENCE)),
    ("ReferencedNonImageCompositeSOPInstanceSequence", Rule(_REFERENCE)),
))

# Table F.7.2-1, N-CREATE column, Type 1 (code sequence macros not checked).
CREATE = Rule(
    ("ScheduledStepAttributesSequence", "PerformedProcedureStepID",
     "PerformedStationAETitle", "PerformedProcedureStepStartDate",
     "PerformedProcedureStepStartTime", "PerformedProcedureStepStatus", "Modality"),
    (
        ("ScheduledStepAttributesSequence", Rule(("StudyInstanceUID",), (
            ("ReferencedStudySequence", Rule(_REFERENCE)),
        ))),
        ("ReferencedPatientSequence", Rule(_REFERENCE)),
        ("PerformedSeriesSequence", _SERIES),
    ),
)

# What an N-SET must leave valid (nested Type 1 of the N-SET column).
SET = Rule((), (("PerformedSeriesSequence", _SERIES),))

# The Final State column (Notes 1 and 2) for a COMPLETED step.
FINAL_STATE = Rule(
    ("PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime",
     "PerformedSeriesSequence"),
    (("PerformedSeriesSequence", _SERIES),),
)
# DISCONTINUED: the same, but the Performed Series Sequence may be empty (see above).
DISCONTINUED_STATE = Rule(
    ("PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime"),
    (("PerformedSeriesSequence", _SERIES),),
)

# Table F.7.2-1: "Not allowed" in the N-SET column (top level), plus the SOP Common
# identity of the instance, which no operation may change.
NOT_SETTABLE = frozenset(_tag(k) for k in (
    "ScheduledStepAttributesSequence", "PatientName", "PatientID", "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence", "OtherPatientIDsSequence", "PatientBirthDate",
    "PatientSex", "ReferencedPatientSequence", "AdmissionID", "IssuerOfAdmissionIDSequence",
    "ServiceEpisodeID", "IssuerOfServiceEpisodeIDSequence", "ServiceEpisodeDescription",
    "PerformedProcedureStepID", "PerformedStationAETitle", "PerformedStationName",
    "PerformedLocation", "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime", "Modality", "StudyID",
    "SOPClassUID", "SOPInstanceUID",
))

# Values this server interprets or indexes: checked against their VR (PS3.5 6.2).
_CHECKED = ("PerformedProcedureStepID", "PerformedStationAETitle",
            "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
            "PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime",
            "Modality", "PatientID")
_CHECKED_IN_STEP = ("StudyInstanceUID", "AccessionNumber", "ScheduledProcedureStepID")


def tag_text(tag: int) -> str:
    """(gggg,eeee), the form PS3 and dcmtk print."""
    t = Tag(tag)
    return f"({t.group:04X},{t.element:04X})"


def _problems(ds: Dataset, rule: Rule, path: tuple[int, ...] = ()
              ) -> Iterator[tuple[str, int, tuple[int, ...]]]:
    """("missing" | "empty", tag, path of enclosing sequences) for each broken rule."""
    for keyword in rule.required:
        tag = _tag(keyword)
        if tag not in ds:
            yield "missing", tag, path
        elif ds[tag].is_empty:
            yield "empty", tag, path
    for keyword, item_rule in rule.items:
        tag = _tag(keyword)
        if tag in ds and ds[tag].VR == "SQ":
            for item in ds[tag].value:
                yield from _problems(item, item_rule, (*path, tag))


def check_required(ds: Dataset, rule: Rule, what: str,
                   missing: type[MissingAttribute | MissingAttributeValue] = MissingAttribute
                   ) -> None:
    """Raise `missing` (absent) or MissingAttributeValue (zero length).

    N-SET passes MissingAttributeValue for both: Missing Attribute (0120H) is not an
    N-SET status (PS3.7 10.1.3.1.9). The tags listed are the outermost ones: for a
    nested attribute, its sequence (the Attribute Identifier List holds top-level
    tags); the message names the nested attribute itself.
    """
    found = list(_problems(ds, rule))
    for kind, error in (("missing", missing), ("empty", MissingAttributeValue)):
        hits = [(tag, path) for k, tag, path in found if k == kind]
        if hits:
            tags = list(dict.fromkeys(path[0] if path else tag for tag, path in hits))
            names = " ".join(_path_text(tag, path) for tag, path in hits)
            raise error(f"{what}: {kind} {names}", tags)


def _path_text(tag: int, path: tuple[int, ...]) -> str:
    return ">".join(tag_text(t) for t in (*path, tag))


def _element(ds: Dataset, keyword: str) -> DataElement | None:
    return ds[keyword] if keyword in ds else None


def text(ds: Dataset, keyword: str) -> str:
    """The value of a single-valued attribute as text ('' when absent or empty)."""
    elem = _element(ds, keyword)
    if elem is None or elem.is_empty:
        return ""
    value = elem.value
    if elem.VM > 1:
        value = value[0]
    return str(value).strip()


def check_value(ds: Dataset, keyword: str) -> None:
    """Raise InvalidAttributeValue unless the attribute's value is valid for its VR."""
    elem = _element(ds, keyword)
    if elem is None or elem.is_empty:
        return
    values = elem.value if elem.VM > 1 else [elem.value]
    for value in values:
        try:
            validate_value(elem.VR, value, pydicom_config.RAISE)
        except (ValueError, TypeError):
            raise InvalidAttributeValue(
                f"invalid {elem.VR} value in {keyword} {tag_text(elem.tag)}: "
                f"{str(value)[:40]!r}") from None


def check_values(ds: Dataset) -> None:
    """Check the values this server relies on, at the top level and in each step item."""
    for keyword in _CHECKED:
        check_value(ds, keyword)
    for item in ds.get("ScheduledStepAttributesSequence", None) or []:
        for keyword in _CHECKED_IN_STEP:
            check_value(item, keyword)


def check_status(ds: Dataset, allowed: Iterable[str]) -> str:
    """The Performed Procedure Step Status, if one of `allowed`; else InvalidAttributeValue."""
    status = text(ds, "PerformedProcedureStepStatus")
    allowed = tuple(allowed)
    if status not in allowed:
        raise InvalidAttributeValue(
            f"PerformedProcedureStepStatus {status[:20]!r} (0040,0252): "
            f"expected {' or '.join(allowed)}")
    return status


def check_create(ds: Dataset) -> None:
    """An N-CREATE Attribute List (PS3.4 F.7.2.1)."""
    check_required(ds, CREATE, "N-CREATE")
    # F.7.2.1.3: any other status is Invalid Attribute Value (0106H).
    check_status(ds, (IN_PROGRESS,))
    check_values(ds)


def check_modification(mods: Dataset) -> None:
    """An N-SET Modification List on its own (PS3.4 F.7.2.2)."""
    refused = sorted(elem.tag for elem in mods if elem.tag in NOT_SETTABLE)
    if refused:
        raise AttributeNotAllowed(
            "N-SET may not change " + " ".join(tag_text(t) for t in refused), refused)
    if "PerformedProcedureStepStatus" in mods:
        check_status(mods, STATUSES)
    for keyword in ("PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime"):
        check_value(mods, keyword)
    check_required(mods, SET, "N-SET", MissingAttributeValue)


def check_final(merged: Dataset, status: str) -> None:
    """The step as it will be once COMPLETED or DISCONTINUED (Final State column)."""
    rule = FINAL_STATE if status == COMPLETED else DISCONTINUED_STATE
    check_required(merged, rule, status, MissingAttributeValue)


def apply_modification(current: Dataset, mods: Dataset) -> Dataset:
    """The stored step with the Modification List applied (a new dataset).

    A zero-length value in the list empties the attribute; sequences are replaced
    whole, since the SCU sends every item of a sequence it changes (F.7.2.2.2).
    """
    merged = Dataset()
    merged.update(current)
    for elem in mods:
        merged[elem.tag] = elem
    return merged
