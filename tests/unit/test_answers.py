"""services/answers.py: an answer encoded directly is byte for byte what pydicom (through
pynetdicom's `encode`, what the C-FIND SCP used to send) writes for its Dataset."""

from __future__ import annotations

from typing import Any

import pydicom
import pytest
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.dataelem import DataElement
from pydicom.sequence import Sequence as DicomSequence
from pynetdicom.dsutils import encode as upstream_encode

from pacs_server.services.answers import (
    CHARSET_TAG,
    UTF8,
    Element,
    encode,
    has_non_ascii,
    to_dataset,
)


@pytest.fixture(autouse=True)
def server_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """pydicom as the server runs it: no read-time validation (dicom/runtime.py)."""
    monkeypatch.setattr(pydicom.config.settings, "reading_validation_mode",
                        pydicom.config.IGNORE)


ALWAYS: list[Element] = [(0x00080052, "CS", "STUDY"), (0x00080054, "AE", "PACS"),
                         (0x00080056, "CS", "ONLINE")]


def with_charset(elements: list[Element]) -> list[Element]:
    out = elements + ALWAYS
    if has_non_ascii(out):
        out.append((CHARSET_TAG, "CS", UTF8))
    return out


def assert_same(elements: list[Element]) -> None:
    for implicit in (True, False):
        expected = upstream_encode(to_dataset(elements), implicit, True)
        assert expected
        assert encode(elements, implicit) == expected, (implicit, elements)


PLAIN: list[Element] = [
    (0x00100010, "PN", "SMITH^JOHN"),            # even
    (0x00100020, "LO", "P000001"),               # odd: space padded
    (0x0020000D, "UI", "1.2.3.4.5"),             # odd UI: NUL padded
    (0x00080020, "DA", "20150101"),
    (0x00080030, "TM", None),                    # empty
    (0x00080061, "CS", ["CT", "MR"]),            # multi-valued column
    (0x00201208, "IS", "155"),
    (0x00101020, "DS", "1.75"),
    (0x00081030, "LO", "A\\B"),                  # a backslash is a value separator
    (0x00081040, "LO", ""),
    (0x00080000, "UL", None),                    # a group length: never written
    (0x00081110, "SQ", DataElement(0x00081110, "SQ", DicomSequence([]))),
    (0x00321060, "LO", "x" * 63),
    (0x00400275, "SQ", DataElement(0x00400275, "SQ", DicomSequence([pydicom.Dataset()]))),
    (0x00080090, "PN", ["A^B", "C^D"]),
    (0x00101030, "DS", " 1e3"),
    (0x00204000, "LT", "line one\r\nline two"),
]


def test_plain_answer() -> None:
    assert_same(with_charset(PLAIN))


ITEMS: list[Element] = [
    (0x00100010, "PN", "GÜNTHER^ÉLODIE"),
    (0x00081110, "SQ", [[(0x00081150, "UI", "1.2.840.10008.3.1.2.3.1"),
                         (0x00081155, "UI", "1.2.3")], []]),        # two items, one empty
    (0x00321064, "SQ", [[(0x00080100, "SH", "RPC1"), (0x00080102, "SH", "L"),
                         (0x00080104, "LO", "Röntgen Thorax")]]),   # non-ASCII in an item
    (0x00400100, "SQ", [[(0x00400001, "AE", ["CT_01", "CT_02"]),
                         (0x00400002, "DA", "20241220"), (0x00400003, "TM", None),
                         (0x00400008, "SQ", [[(0x00080100, "SH", "P1"),
                                              (0x00080104, "LO", "x" * 63)]]),
                         (0x00400009, "SH", "S1")]]),               # nested
    (0x00081120, "SQ", []),                                        # zero length
    (0x00101030, "DS", 70.5),                                      # JSON numbers
    (0x00201208, "IS", 12),
]


def test_sequences_of_element_lists() -> None:
    assert_same(with_charset(ITEMS))
    assert_same(with_charset([e for e in ITEMS if e[1] != "PN"]))


def test_a_value_pydicom_refuses_is_refused_alike() -> None:
    bad: list[Element] = [(0x00101030, "DS", "not a number")]
    with pytest.raises(ValueError):
        to_dataset(bad)
    with pytest.raises(ValueError):
        encode(bad, True)


@pytest.mark.parametrize("name", ["chrH31.dcm", "chrRuss.dcm", "chrKoreanMulti.dcm",
                                  "chrX1.dcm", "chrGreek.dcm"])
def test_answers_in_other_character_sets(name: str) -> None:
    ds = pydicom.dcmread(get_charset_files(name)[0])
    ds.decode()
    columns: list[Element] = []     # text, as an index column holds it
    headers: list[Element] = []     # elements, as the stored header holds them
    for elem in ds:
        if elem.tag in (CHARSET_TAG, 0x00080052, 0x00080054, 0x00080056):
            continue
        value: Any = elem.value
        if elem.VR == "SQ":
            # As the header path builds it: decoded items, encoded like the rest.
            headers.append((int(elem.tag), "SQ", DataElement(elem.tag, "SQ", DicomSequence(
                [pydicom.Dataset(item) for item in value]))))
        elif elem.VR in ("PN", "LO", "SH", "CS", "DA", "TM", "UI", "ST", "LT"):
            columns.append((int(elem.tag), elem.VR, str(value) if elem.VM == 1 else
                            [str(v) for v in value]))
            headers.append((int(elem.tag), elem.VR, DataElement(elem.tag, elem.VR, value)))
    for elements in (columns, headers):
        answer = with_charset(elements)
        assert any(t == CHARSET_TAG for t, _, _ in answer)
        assert_same(answer)


def test_a_header_read_from_a_file() -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    elements: list[Element] = [(int(e.tag), e.VR, DataElement(e.tag, e.VR, e.value))
                               for e in ds if e.tag < 0x00290000]
    assert_same(with_charset(elements))
