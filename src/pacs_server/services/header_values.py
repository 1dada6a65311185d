"""The indexed values of a received header, each decoded once (services/ingest.py).

`Dataset.get(keyword)` of a raw element builds a DataElement through pydicom's hooks
and replaces the raw one (about 20 µs an element). `HeaderValues.get` hands a raw text
element straight to pydicom's value converter with the dataset's character set, which
is what those hooks end in; anything else (an element already converted, a VR of
another kind) is `Dataset.get`'s.

`HeaderValues.text` is what the index keeps of a value: pydicom's value as text
(`values.value_text`), stripped. For the common value (one value, ASCII bytes, no
escape sequence, a character set that decodes ASCII as ASCII, no date/time conversion)
it is computed from the bytes with the string operations pydicom's converter applies
for that VR (pydicom 3.0, `pydicom.values` and `PersonName`), without building the
value objects (UID, PersonName, MultiValue): ~1 µs instead of ~15–25 µs. Any other value
takes pydicom's way. tests/unit/test_header_values.py compares the two on crafted
values of every such VR, and tests/unit/test_ingest.py on every pydicom test file.
"""

from __future__ import annotations

import re
from typing import Any

from pydicom import config as pydicom_config
from pydicom.charset import convert_encodings, default_encoding, python_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag
from pydicom.values import convert_value

from pacs_server.index.attributes import QR_ATTRIBUTES
from pacs_server.values import value_text

# VRs whose raw value goes straight to pydicom's converter (no hook of pydicom's
# changes them: no UN, no ambiguous US/SS, no numeric length checks).
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH",
                       "ST", "TM", "UC", "UI", "UR", "UT"})
# Of those, the VRs whose one value pydicom gives as the decoded bytes with trailing
# NULs and spaces removed (convert_text, convert_single_string, convert_string and
# multi_string, convert_UI; DA/DT/TM only without datetime_conversion). AE is
# stripped of whitespace on both sides (convert_AE_string), UR of trailing whitespace
# (convert_UR_string), PN of trailing empty component groups (PersonName). DS and IS
# become numbers: pydicom's way.
_RSTRIPPED = frozenset({"AS", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC", "UI",
                        "UT"})
_DATETIME_VRS = frozenset({"DA", "DT", "TM"})
_CHARSET = BaseTag(0x00080005)
_TAGS = {a.keyword: BaseTag(a.tag) for a in QR_ATTRIBUTES.rows if not a.derived} | {
    "SOPClassUID": BaseTag(Tag("SOPClassUID"))}
_ESC = 0x1B
_PLAIN_INT = re.compile(r" *[+-]?[0-9]{1,9} *\Z")
# pydicom's PersonName encodes the value again on decoding (convert_PN), and its JIS
# encoders raise on an empty component group ("=A^B"): that value is then not indexed
# (ingest._text), so PN values under these encodings keep pydicom's way.
_JIS = frozenset({"iso2022_jp", "iso_ir_159"})


def _decodes_ascii_as_ascii(encoding: str) -> bool:
    printable = bytes(b for b in range(128) if b != _ESC)
    try:
        return printable.decode(encoding) == printable.decode("ascii")
    except (LookupError, UnicodeError):
        return False


# Python codecs of the DICOM character sets (pydicom.charset.python_encoding) under
# which bytes without ESC decode to the same ASCII text (pydicom's decode_bytes
# decodes such bytes with the first encoding alone).
_ASCII_ENCODINGS = frozenset(e for e in {default_encoding, *python_encoding.values()}
                             if _decodes_ascii_as_ascii(e))
# Specific Character Set raw value → pydicom's encodings list: most archives see a few.
_ENCODINGS: dict[tuple[str | None, bytes], list[str]] = {}
_ENCODINGS_MAX = 64


class HeaderValues:
    """The values `build_record` reads from one header (a Dataset of raw elements)."""

    def __init__(self, ds: Dataset) -> None:
        self._ds = ds
        self._seen: dict[str, Any] = {}
        self._texts: dict[str, str] = {}
        self._encodings: list[str] | None = None

    def get(self, keyword: str) -> Any:
        """pydicom's value of `keyword` (None when absent)."""
        if keyword in self._seen:
            return self._seen[keyword]
        ds = self._ds
        tag = _TAGS.get(keyword)
        elem: Any = ds.get_item(tag) if tag is not None else None
        if type(elem) is RawDataElement and (elem.VR or _dictionary_vr(tag)) in _TEXT_VRS:
            value = convert_value(elem.VR or dictionary_VR(elem.tag), elem, self._charset())
        else:
            value = ds.get(keyword)
        self._seen[keyword] = value
        return value

    def text(self, keyword: str) -> str:
        """`value_text(self.get(keyword)).strip().rstrip("\\0")`, from the bytes when
        the value is a common one (see the module docstring).

        Raises:
            Exception: whatever pydicom raises for a malformed value (its way only).
        """
        if keyword in self._texts:
            return self._texts[keyword]
        tag = _TAGS.get(keyword)
        elem: Any = self._ds.get_item(tag) if tag is not None else None
        text = None
        if elem is None:
            text = ""
        elif type(elem) is RawDataElement:
            text = _common_text(elem.VR or _dictionary_vr(tag), elem.value,
                                self._charset())
        if text is None:
            text = value_text(self.get(keyword)).strip().rstrip("\0")
        self._texts[keyword] = text
        return text

    def integer(self, keyword: str) -> int | None:
        """`int()` of pydicom's value (None when absent, empty, multi-valued or not a
        number), from the bytes for a plain IS value of up to 9 digits (`IS` is an int
        there, and no float rounding or 2**31 check applies)."""
        tag = _TAGS.get(keyword)
        elem: Any = self._ds.get_item(tag) if tag is not None else None
        if elem is None:
            return None
        if (type(elem) is RawDataElement and (elem.VR or _dictionary_vr(tag)) == "IS"
                and elem.value and elem.value.isascii()):
            plain = _PLAIN_INT.match(elem.value.decode("ascii").rstrip(" \0"))
            if plain is not None:
                return int(plain.group())
        try:
            value = self.get(keyword)
            return int(value) if value not in (None, "") else None
        except (TypeError, ValueError):
            return None

    def _charset(self) -> list[str]:
        # What Dataset._character_set gives a top-level dataset.
        if self._encodings is None:
            elem: Any = self._ds.get_item(_CHARSET)
            if elem is None:
                self._encodings = [default_encoding]
            elif type(elem) is RawDataElement:
                key = (elem.VR, bytes(elem.value or b""))
                found = _ENCODINGS.get(key)
                if found is None:
                    found = self._convert_charset()
                    if len(_ENCODINGS) >= _ENCODINGS_MAX:
                        _ENCODINGS.clear()
                    _ENCODINGS[key] = found
                self._encodings = found
            else:
                self._encodings = self._convert_charset()
        return self._encodings

    def _convert_charset(self) -> list[str]:
        elem = self._ds.get(_CHARSET)
        return (convert_encodings(elem.value) if elem and elem.value
                else [default_encoding])


def _common_text(vr: str | None, raw: bytes | None, encodings: list[str]) -> str | None:
    """The indexed text of a one-valued ASCII value of a text VR; None: not such a
    value (pydicom's converter decides)."""
    if raw is None or vr is None:
        return None
    if not raw:
        # An empty value is "" or None (empty_value_for_VR) for every text VR: "".
        return "" if vr in _TEXT_VRS else None
    if (b"\\" in raw or _ESC in raw or not raw.isascii()
            or encodings[0] not in _ASCII_ENCODINGS):
        return None
    if vr in _RSTRIPPED:
        if vr in _DATETIME_VRS and pydicom_config.datetime_conversion:
            return None
        text = raw.decode("ascii").rstrip("\0 ")
    elif vr == "PN":
        if not _JIS.isdisjoint(encodings):
            return None
        groups = raw.rstrip(b"\0 ").decode("ascii").split("=")
        while groups and not groups[-1]:
            groups.pop()
        text = "=".join(groups)
    elif vr == "AE":
        text = raw.decode("ascii").strip()
    elif vr == "UR":
        text = raw.decode("ascii").rstrip()
    else:
        return None
    return text.strip().rstrip("\0")


def _dictionary_vr(tag: BaseTag | None) -> str | None:
    try:
        return dictionary_VR(tag) if tag is not None else None
    except KeyError:
        return None
