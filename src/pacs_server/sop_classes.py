"""Storage SOP classes: the full list from the DICOM UID dictionary and `--accept` parsing.

An entry of `storage.accepted_sop_classes` may be a modality code (CT), a SOP class name
("CT Image Storage", case-insensitive), a common short form of one ("US Image Storage",
"Ultrasound Multi-frame", "Secondary Capture") or a UID.
"""

from __future__ import annotations

import difflib
import re
from functools import cache

from pydicom._uid_dict import UID_dictionary

from pacs_server.values import UID_RE

# Storage SOP classes that are not composite-object storage (they belong to other
# services or are retired media classes) are left out.
_NOT_STORAGE = {
    "1.2.840.10008.1.3.10",      # Media Storage Directory Storage
    "1.2.840.10008.1.20.1",      # Storage Commitment Push Model
    "1.2.840.10008.1.20.2",      # Storage Commitment Pull Model (retired)
}


@cache
def all_storage_classes() -> tuple[str, ...]:
    """Every current (non-retired) composite Storage SOP class UID in pydicom's dictionary."""
    uids = []
    for uid, (name, kind, _info, retired, *_rest) in UID_dictionary.items():
        # Composite IOD storage lives under 1.2.840.10008.5.1.4.1.1; the rest are
        # non-patient objects, print and media classes with other service rules.
        if kind != "SOP Class" or uid in _NOT_STORAGE or retired == "Retired":
            continue
        if not uid.startswith("1.2.840.10008.5.1.4.1.1.") or "Storage" not in name:
            continue
        if any(word in name for word in ("Trial", "DICOS", "Eddy Current", "Protocol",
                                          "Inventory", "Approval")):
            continue
        uids.append(uid)
    return tuple(sorted(uids))


# Modality code -> name fragments of its storage classes (PS3.3 C.7.3.1.1.1 codes).
_MODALITY_NAMES: dict[str, tuple[str, ...]] = {
    "CT": ("CT Image Storage", "Enhanced CT", "Legacy Converted Enhanced CT"),
    "MR": ("MR Image Storage", "Enhanced MR", "MR Spectroscopy",
           "Legacy Converted Enhanced MR"),
    "US": ("Ultrasound",),
    "CR": ("Computed Radiography",),
    "DX": ("Digital X-Ray",),
    "MG": ("Mammography", "Breast Tomosynthesis", "Breast Projection"),
    "IO": ("Intra-Oral",),
    "XA": ("X-Ray Angiographic", "X-Ray 3D Angiographic", "XA/XRF"),
    "RF": ("X-Ray Radiofluoroscopic", "XA/XRF"),
    "NM": ("Nuclear Medicine",),
    "PT": ("Positron Emission", "PET Image"),
    "OT": ("Secondary Capture",),
    "SC": ("Secondary Capture",),
    "SR": ("SR Storage", "Key Object Selection", "Mammography CAD SR", "Chest CAD SR",
           "Procedure Log", "Radiation Dose SR", "Acquisition Context SR"),
    "KO": ("Key Object Selection",),
    "PR": ("Presentation State",),
    "RTIMAGE": ("RT Image",),
    "RTDOSE": ("RT Dose",),
    "RTSTRUCT": ("RT Structure Set",),
    "RTPLAN": ("RT Plan", "RT Ion Plan"),
    "RTRECORD": ("Treatment Record",),
    "SEG": ("Segmentation Storage",),
    "REG": ("Registration Storage",),
    "ECG": ("ECG Waveform",),
    "XC": ("VL Photographic", "External Camera"),
    "ES": ("VL Endoscopic",),
    "SM": ("VL Whole Slide Microscopy", "VL Slide-Coordinates Microscopic"),
    "OP": ("Ophthalmic Photography",),
    "OPT": ("Ophthalmic Tomography",),
    "DOC": ("Encapsulated PDF", "Encapsulated CDA"),
}


# Abbreviations users put in front of a class name ("US Image Storage"), spelled out as in
# the UID dictionary's names.
_ABBREVIATIONS: dict[str, str] = {
    "us": "ultrasound",
    "cr": "computed radiography",
    "dx": "digital x-ray",
    "mg": "digital mammography x-ray",
    "io": "digital intra-oral x-ray",
    "xa": "x-ray angiographic",
    "rf": "x-ray radiofluoroscopic",
    "nm": "nuclear medicine",
    "pet": "positron emission tomography",
    "pt": "positron emission tomography",
    "sc": "secondary capture",
    "vl": "vl",
}
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 /-]*")
_WORDS = re.compile(r"[a-z0-9]+(?:[-/][a-z0-9]+)*")


def _short_key(name: str) -> str:
    """A name reduced to what users keep: lower case, abbreviation spelled out, without
    the words "image" and "storage" ("US Image Storage" and "Ultrasound Image Storage"
    both become "ultrasound")."""
    words = _WORDS.findall(name.lower())
    if words and words[0] in _ABBREVIATIONS:
        words[0:1] = _ABBREVIATIONS[words[0]].split()
    return " ".join(w for w in words if w not in ("image", "storage", "sop", "class"))


@cache
def _short_forms() -> dict[str, tuple[str, ...]]:
    """Short key -> the storage classes it names (more than one = ambiguous)."""
    out: dict[str, list[str]] = {}
    for uid in all_storage_classes():
        out.setdefault(_short_key(UID_dictionary[uid][0]), []).append(uid)
    return {k: tuple(v) for k, v in out.items()}


def _by_short_form(entry: str) -> str:
    """The one storage class a short form names.

    Raises:
        ValueError: no class, or several, go by that name.
    """
    key = _short_key(entry) if _PLAIN_NAME.fullmatch(entry) else ""
    found = _short_forms().get(key, ()) if key else ()
    if len(found) == 1:
        return found[0]
    if found:
        names = ", ".join(repr(UID_dictionary[u][0]) for u in found)
        raise ValueError(f"{entry!r} could mean any of {names}; write the full name")
    close = difflib.get_close_matches(key, list(_short_forms()), n=1, cutoff=0.75)
    hint = (f" (did you mean {UID_dictionary[_short_forms()[close[0]][0]][0]!r}?)"
            if close and len(_short_forms()[close[0]]) == 1 else "")
    raise ValueError(f"{entry!r} is not a modality code, storage SOP class name or UID{hint}")


def resolve_storage_classes(entries: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Turn config entries into SOP class UIDs; an empty list means every storage class.

    Raises:
        ValueError: an entry matches no storage SOP class.
    """
    if not entries:
        return all_storage_classes()
    known = all_storage_classes()
    by_name = {UID_dictionary[u][0].lower(): u for u in known}
    out: list[str] = []
    for raw in entries:
        entry = raw.strip()
        if UID_RE.match(entry):
            out.append(entry)  # private or newer classes are allowed by UID
            continue
        if entry.lower() in by_name:
            out.append(by_name[entry.lower()])
            continue
        fragments = _MODALITY_NAMES.get(entry.upper())
        if fragments is None:
            out.append(_by_short_form(entry))
            continue
        out.extend(u for u in known
                   if any(f.lower() in UID_dictionary[u][0].lower() for f in fragments))
    return tuple(dict.fromkeys(out))


def sop_class_name(uid: str) -> str:
    """Human name of a SOP class UID, or the UID itself."""
    entry = UID_dictionary.get(uid)
    return entry[0] if entry else uid
