"""DICOM JSON (PS3.18 F.2) of a dataset read from a file, straight from its raw elements.

pydicom's `Dataset.to_json_dict` converts every element through its full value machinery
(about 0.2 ms an element; 50 ms for a CT header), which makes a 300-instance series'
first metadata request take many seconds. Here the common elements (ASCII text, person
names, numbers, binary values) are decoded from their raw bytes directly; anything else
(sequences, non-ASCII text, ambiguous VRs, odd lengths) goes through pydicom, so the
result is the same as `to_json_dict` (tests/unit/test_dicomweb_json.py compares them).
"""

from __future__ import annotations

import base64
import struct
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

_BINARY = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_SINGLE_TEXT = frozenset({"LT", "ST", "UT", "UR"})           # no backslash splitting
_TEXT = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "SH", "TM", "UC", "UI"}) | _SINGLE_TEXT
_NUMBERS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d",
            "UV": "Q", "SV": "q"}


def dataset_json(ds: Dataset) -> dict[str, Any]:
    """`ds.to_json_dict()` for a dataset read from a file, without bulk data handling
    (binary values inline), computed mostly from the raw bytes."""
    out: dict[str, Any] = {}
    for elem in ds.elements():
        tag = int(elem.tag)
        key = f"{tag:08X}"
        found = _raw_json(elem) if isinstance(elem, RawDataElement) else None
        if found is None:
            found = ds[tag].to_json_dict(None, 1 << 62)
        out[key] = found
    return out


def _raw_json(raw: RawDataElement) -> dict[str, Any] | None:
    """The element's JSON from its raw value, or None for pydicom to do it."""
    vr = raw.VR
    if vr is None:
        if raw.tag >> 16 & 1:
            return None       # private: pydicom knows private dictionaries and creators
        try:
            vr = dictionary_VR(raw.tag)
        except KeyError:
            return None
    value = raw.value
    if (not isinstance(value, bytes) or vr == "UN" or raw.tag & 0xFFFF == 0
            or raw.tag >> 16 == 2):
        return None           # UN may be a known VR pydicom restores; group lengths, meta
    if vr in _BINARY:
        return {"vr": vr, "InlineBinary": base64.b64encode(value).decode()} if value \
            else {"vr": vr}
    if vr in _NUMBERS:
        code = _NUMBERS[vr]
        size = struct.calcsize(code)
        if len(value) % size:
            return None
        if not value:
            return {"vr": vr}
        order = "<" if raw.is_little_endian else ">"
        numbers = list(struct.unpack(f"{order}{len(value) // size}{code}", value))
        return {"vr": vr, "Value": numbers}
    if vr not in _TEXT and vr not in ("PN", "IS", "DS", "AT"):
        return None
    if vr == "AT":
        return None
    if not value.isascii() or b"\x1b" in value:
        return None           # the character set decides (ISO 2022 escapes too): pydicom
    # As pydicom: the whole value loses its padding, then splits (components keep theirs).
    text = value.decode("ascii").rstrip("\0 ") if vr != "UI" else \
        value.decode("ascii").rstrip("\0")
    if vr not in _SINGLE_TEXT:
        text = text.lstrip(" ") if vr in ("IS", "DS") else text
    if not text:
        return {"vr": vr}
    parts = [text] if vr in _SINGLE_TEXT else text.split("\\")
    if vr == "PN":
        return {"vr": vr, "Value": [_person(p) for p in parts]}
    if vr == "IS":
        try:
            return {"vr": vr, "Value": [int(p) if p.strip() else None for p in parts]}
        except ValueError:
            return None
    if vr == "DS":
        try:
            return {"vr": vr, "Value": [float(p) if p.strip() else None for p in parts]}
        except ValueError:
            return None
    return {"vr": vr, "Value": parts}


def _person(value: str) -> dict[str, str] | None:
    if not value:
        return None
    groups = value.split("=")
    out = {"Alphabetic": groups[0]}
    if len(groups) > 1:
        out["Ideographic"] = groups[1]
    if len(groups) > 2:
        out["Phonetic"] = groups[2]
    return out
