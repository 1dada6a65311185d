"""HeaderValues.text: the indexed text of a raw header value is pydicom's, whatever
the bytes (services/header_values.py computes common values from the bytes)."""

from __future__ import annotations

import itertools

import pytest
from pydicom import config as pydicom_config
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag

from pacs_server.services import header_values
from pacs_server.services.header_values import HeaderValues
from pacs_server.values import value_text

# (keyword, VR as the file may declare it): each indexed keyword, and other text VRs.
_ELEMENTS = [("PatientID", "LO"), ("PatientName", "PN"), ("PatientBirthDate", "DA"),
             ("PatientSex", "CS"), ("StudyTime", "TM"), ("AccessionNumber", "SH"),
             ("StudyDescription", "LO"), ("SOPInstanceUID", "UI"), ("SeriesNumber", "IS"),
             ("InstanceNumber", "IS"), ("ContentTime", "TM"), ("ReferringPhysicianName", "PN"),
             # A file may declare another VR than the dictionary's: each converter.
             ("StudyID", "AE"), ("Modality", "AS"), ("BodyPartExamined", "UR"),
             ("SeriesDescription", "ST"), ("IssuerOfPatientID", "LT"),
             ("StudyDescription", "UT"), ("SeriesDescription", "UC"),
             ("ContentDate", "DT"), ("StudyDate", "DS"), ("PatientID", "UN"),
             ("PatientID", None)]
_VALUES = [b"", b" ", b"\0", b"ABC", b"ABC ", b"ABC\0", b" ABC ", b"A B  ", b"ABC \0",
           b"\tABC\t", b"ABC\r\n", b"A\\B", b"A \\B ", b"A^B=C^D", b"A^B==", b"=A^B",
           b"A^B= ", b"==", b"12", b" 12 ", b"+3", b"1.5", b"20240101", b"2024.01.01",
           b"1.2.840.10008.1.2", b"1.2.3\0", b"M\xfcller", "山田^太郎".encode(),
           b"\x1b$B;3ED\x1b(B", b"ABC\x00DEF", b"\x7f", b"123456789", b"1234567890",
           b"12345678901234567890", b"-5 ", b"1\\2", b"0012", b"\t7", b"7\0", b"- 7",
           b"1e3", b"3.0"]
_CHARSETS = [None, b"ISO_IR 100", b"ISO_IR 192", b"ISO 2022 IR 87", b"ISO_IR 13",
             b"\\ISO 2022 IR 87", b"NOT A CHARSET"]


def _dataset(keyword: str, vr: str | None, raw: bytes, charset: bytes | None) -> Dataset:
    elements = {}
    if charset is not None:
        elements[BaseTag(0x00080005)] = RawDataElement(
            BaseTag(0x00080005), "CS", len(charset), charset, 0, False, True)
    tag = BaseTag(Tag(keyword))
    elements[tag] = RawDataElement(tag, vr, len(raw), raw, 0, vr is None, True)
    return Dataset(elements)


def _pydicoms(ds: Dataset, keyword: str) -> str:
    try:
        for _elem in ds:    # iterating converts every element, pydicom's way
            pass
        return value_text(ds.get(keyword)).strip().rstrip("\0")
    except Exception:
        return "<raises>"


def _pydicoms_int(ds: Dataset, keyword: str) -> int | str | None:
    try:
        for _elem in ds:
            pass
        value = ds.get(keyword)
    except Exception:
        return "<raises>"
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _ours(ds: Dataset, keyword: str) -> str:
    try:
        return HeaderValues(ds).text(keyword)
    except Exception:
        return "<raises>"


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("datetime_conversion", [False, True])
def test_text_is_pydicoms_for_every_vr_value_and_charset(datetime_conversion: bool) -> None:
    old = pydicom_config.datetime_conversion
    pydicom_config.datetime_conversion = datetime_conversion
    try:
        compared = 0
        for (keyword, vr), raw, charset in itertools.product(_ELEMENTS, _VALUES, _CHARSETS):
            ours = _ours(_dataset(keyword, vr, raw, charset), keyword)
            want = _pydicoms(_dataset(keyword, vr, raw, charset), keyword)
            assert ours == want, (keyword, vr, raw, charset)
            try:
                ours_int = HeaderValues(_dataset(keyword, vr, raw, charset)).integer(keyword)
            except Exception:
                ours_int = "<raises>"
            want_int = _pydicoms_int(_dataset(keyword, vr, raw, charset), keyword)
            assert ours_int == want_int, (keyword, vr, raw, charset)
            compared += 1
        assert compared == len(_ELEMENTS) * len(_VALUES) * len(_CHARSETS)
    finally:
        pydicom_config.datetime_conversion = old


def test_common_values_are_read_from_the_bytes() -> None:
    # The comparison above would pass with pydicom's way everywhere: the common value
    # must not take it (that is the point of the module).
    ds = _dataset("PatientName", "PN", b"SMITH^JOHN ", b"ISO_IR 100")
    values = HeaderValues(ds)
    assert values.text("PatientName") == "SMITH^JOHN"
    assert values._seen == {}            # no pydicom value was built
    assert HeaderValues(_dataset("SeriesNumber", "IS", b" 12 ", None)).integer(
        "SeriesNumber") == 12
    assert header_values._common_text("PN", "Müller".encode(), ["UTF8"]) is None
    assert header_values._common_text("DS", b"1.5", ["iso8859"]) is None


def test_an_absent_value_is_empty_text() -> None:
    assert HeaderValues(_dataset("PatientID", "LO", b"X", None)).text("PatientName") == ""
