"""C-FIND answers as element lists: to a pydicom Dataset, or straight to identifier bytes.

An answer is a list of `(tag, VR, value)`: value None (empty), a str, a list of str (a
multi-valued column), for VR SQ a list of items (each itself such a list), or a ready
`DataElement` (from the stored header, or an empty sequence). `to_dataset()` builds
what the answer was before; `encode()` writes the same bytes pydicom's `write_dataset`
writes for that Dataset (PS3.5 7.1: elements in tag order, text padded to even length,
UI with NUL), in Implicit or Explicit VR Little Endian, without building the Dataset:
text of the common VRs and sequences of items are encoded here (defined length, as
pydicom writes a Sequence it did not read: PS3.5 7.5.1), anything else (header values,
binary and odd values) one element at a time by pydicom.
tests/unit/test_answers.py compares the two byte for byte, character sets included.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Sequence
from typing import Any

from pydicom.charset import convert_encodings
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.sequence import Sequence as DicomSequence

Element = tuple[int, str, Any]

CHARSET_TAG = 0x00080005
UTF8 = "ISO_IR 192"
# Text VRs whose bytes depend on the Specific Character Set (PS3.5 6.1.2.3).
CHARSET_VRS = frozenset({"PN", "LO", "SH", "ST", "LT", "UT", "UC"})
# Written here when the value is plain text: the VRs pydicom writes as strings.
_TEXT_VRS = CHARSET_VRS | {"AE", "AS", "CS", "DA", "DT", "TM", "UI", "UR"}
# IS values written as they are only when pydicom would write the same text (DS never).
_INTEGER = re.compile(r"-?[0-9]{1,11}\Z")
# Explicit VR: these have 2 reserved bytes and a 32-bit length (PS3.5 7.1.2).
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR",
                       "UT", "UV"})


def has_non_ascii(elements: Iterable[Element]) -> bool:
    """Does any text of a character-set VR need more than ASCII?"""
    for _, vr, value in elements:
        if isinstance(value, DataElement):
            if _element_non_ascii(value):
                return True
        elif vr == "SQ":
            if any(has_non_ascii(item) for item in value or []):
                return True
        elif vr in CHARSET_VRS and value and not str(value).isascii():
            return True
    return False


def _element_non_ascii(elem: DataElement) -> bool:
    if elem.VR == "SQ":
        return any(_dataset_non_ascii(item) for item in elem.value or [])
    return elem.VR in CHARSET_VRS and bool(elem.value) and not str(elem.value).isascii()


def _dataset_non_ascii(ds: Dataset) -> bool:
    return any(_element_non_ascii(elem) for elem in ds)


def to_dataset(elements: Iterable[Element]) -> Dataset:
    """The answer as a pydicom Dataset."""
    ds = Dataset()
    for tag, vr, value in elements:
        if isinstance(value, DataElement):
            ds.add(value)
        elif vr == "SQ":
            ds.add(DataElement(tag, vr, DicomSequence([to_dataset(i) for i in value or []])))
        else:
            ds.add(DataElement(tag, vr, value))
    return ds


def encode(elements: Sequence[Element], implicit_vr: bool) -> bytes:
    """The answer's bytes in Implicit (or Explicit) VR Little Endian, as pydicom's
    `write_dataset(to_dataset(elements))` writes them."""
    return _encode(elements, implicit_vr, None)


def _encode(elements: Sequence[Element], implicit_vr: bool, parent_charset: Any) -> bytes:
    """One dataset (the answer, or an item of one of its sequences, which inherits the
    character set of the dataset holding it unless it names its own)."""
    by_tag = {tag: (tag, vr, value) for tag, vr, value in elements}
    charset = by_tag[CHARSET_TAG][2] if CHARSET_TAG in by_tag else parent_charset
    if isinstance(charset, DataElement):
        charset = charset.value
    utf8 = charset == UTF8
    out = []
    for tag in sorted(by_tag):
        if tag & 0xFFFF == 0 and tag >> 16 > 6:
            continue            # retired group lengths are not written (PS3.5 7.2)
        _, vr, value = by_tag[tag]
        raw: bytes | None
        if vr == "SQ" and isinstance(value, list):
            raw = b"".join(_item(_encode(item, implicit_vr, charset)) for item in value)
        else:
            raw = None if isinstance(value, DataElement) else _text(vr, value, utf8)
        if raw is None:
            out.append(_by_pydicom(tag, vr, value, implicit_vr, charset))
        elif implicit_vr:
            out.append(struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(raw)) + raw)
        elif vr in _LONG_VRS:
            out.append(struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr.encode(), 0,
                                   len(raw)) + raw)
        elif len(raw) <= 0xFFFF:
            out.append(struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(),
                                   len(raw)) + raw)
        else:
            out.append(_by_pydicom(tag, vr, value, implicit_vr, charset))
    return b"".join(out)


def _item(body: bytes) -> bytes:
    """A sequence item of defined length: (FFFE,E000), its length, its dataset."""
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body


def _text(vr: str, value: Any, utf8: bool) -> bytes | None:
    """The padded value bytes of a plain text value, or None to leave it to pydicom."""
    if value is None:
        return b""
    if isinstance(value, str):
        text = value
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        text = "\\".join(value)
    else:
        return None
    if vr == "IS":
        if not all(_INTEGER.match(v) for v in text.split("\\")):
            return None
    elif vr not in _TEXT_VRS:
        return None
    if text.isascii():
        raw = text.encode("ascii")
    elif utf8 and vr in CHARSET_VRS and "=" not in text:
        raw = text.encode("utf-8")
    else:
        return None
    if len(raw) % 2:
        raw += b"\0" if vr == "UI" else b" "
    return raw


def _by_pydicom(tag: int, vr: str, value: Any, implicit_vr: bool, charset: Any) -> bytes:
    """One element written by pydicom, with the answer's character set."""
    elem = value if isinstance(value, DataElement) else DataElement(tag, vr, value)
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = implicit_vr
    write_data_element(fp, elem, convert_encodings(charset or "iso8859"))
    return bytes(fp.getvalue())
