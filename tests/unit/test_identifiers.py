"""dicom/identifiers.py: a received identifier → FindRequest, and SOP class → model."""

from __future__ import annotations

from typing import Any

import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pynetdicom import sop_class as sop_classes
from pynetdicom.sop_class import (
    ModalityWorklistInformationFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from pacs_server.dicom.identifiers import parse_identifier
from pacs_server.errors import InvalidQuery
from pacs_server.services.query import FindRequest, QueryKey
from support.scu import identifier

STUDY_FIND = str(StudyRootQueryRetrieveInformationModelFind)


def keys_of(req: FindRequest) -> dict[str, QueryKey]:
    return {k.keyword: k for k in req.keys}


@pytest.mark.parametrize("service", ["Find", "Move", "Get"])
@pytest.mark.parametrize(("root", "model"), [("Patient", "PATIENT"), ("Study", "STUDY")])
def test_information_model_from_the_sop_class(root: str, service: str, model: str) -> None:
    sop_class = getattr(sop_classes, f"{root}RootQueryRetrieveInformationModel{service}")
    req = parse_identifier(identifier("STUDY", StudyInstanceUID="1.2.3"), str(sop_class))
    assert (req.model, req.level) == (model, "STUDY")


def test_an_unsupported_model_is_an_invalid_query() -> None:
    with pytest.raises(InvalidQuery, match="unsupported information model"):
        parse_identifier(identifier("STUDY"), str(ModalityWorklistInformationFind))


@pytest.mark.parametrize(("given", "level"), [
    ("PATIENT", "PATIENT"), ("STUDY", "STUDY"), ("SERIES", "SERIES"), ("IMAGE", "IMAGE"),
    ("series", "SERIES"), (" IMAGE ", "IMAGE"),
    ("FRAME", "FRAME"),                      # not a level: QueryService.validate refuses it
])
def test_level_is_trimmed_and_upper_cased(given: str, level: str) -> None:
    assert parse_identifier(identifier(given), STUDY_FIND).level == level


@pytest.mark.parametrize("ds", [Dataset(), identifier("")], ids=["absent", "empty"])
def test_missing_level_is_an_invalid_query(ds: Dataset) -> None:
    with pytest.raises(InvalidQuery, match="QueryRetrieveLevel is missing"):
        parse_identifier(ds, STUDY_FIND)


def test_no_identifier_is_an_invalid_query() -> None:
    with pytest.raises(InvalidQuery, match="no identifier"):
        parse_identifier(None, STUDY_FIND)


def test_keys_carry_tag_keyword_vr_and_value() -> None:
    ds = identifier("STUDY", PatientID="PID-1 ", StudyDate="20230101-20230131",
                    StudyInstanceUID="", NumberOfStudyRelatedInstances="")
    req = parse_identifier(ds, STUDY_FIND)
    keys = keys_of(req)
    assert "QueryRetrieveLevel" not in keys
    assert set(keys) == {"PatientID", "StudyDate", "StudyInstanceUID",
                         "NumberOfStudyRelatedInstances"}
    assert (keys["PatientID"].tag, keys["PatientID"].vr, keys["PatientID"].value) == (
        0x00100020, "LO", "PID-1")
    assert keys["StudyDate"].value == "20230101-20230131"
    assert keys["StudyInstanceUID"].value == ""            # universal: return it
    assert keys["NumberOfStudyRelatedInstances"].vr == "IS"
    assert keys["PatientID"].element is ds["PatientID"]
    assert req.combined_datetime is False


def test_combined_datetime_is_passed_on() -> None:
    req = parse_identifier(identifier("STUDY"), STUDY_FIND, combined_datetime=True)
    assert req.combined_datetime is True


def test_command_and_file_meta_groups_are_not_keys() -> None:
    ds = identifier("STUDY", StudyInstanceUID="")
    ds.add_new(0x00000900, "US", 0)
    ds.add_new(0x00020010, "UI", "1.2.840.10008.1.2.1")
    assert [k.keyword for k in parse_identifier(ds, STUDY_FIND).keys] == ["StudyInstanceUID"]


@pytest.mark.parametrize(("keyword", "value", "text"), [
    ("ModalitiesInStudy", ["CT", "MR"], "CT\\MR"),
    ("StudyInstanceUID", ["1.2.3", "1.2.4"], "1.2.3\\1.2.4"),
    ("PatientName", "Doe^John", "Doe^John"),
])
def test_multiple_values_become_one_backslash_list(keyword: str, value: Any, text: str) -> None:
    keys = keys_of(parse_identifier(identifier("STUDY", **{keyword: value}), STUDY_FIND))
    assert keys[keyword].value == text


def test_sequence_keys_are_returned_not_matched() -> None:
    item = Dataset()
    item.CodeValue = "T-A0100"
    ds = identifier("STUDY", ProcedureCodeSequence=Sequence([item]),
                    ReferencedStudySequence=Sequence([]))
    keys = keys_of(parse_identifier(ds, STUDY_FIND))
    for keyword in ("ProcedureCodeSequence", "ReferencedStudySequence"):
        assert (keys[keyword].vr, keys[keyword].value) == ("SQ", "")
    assert keys["ProcedureCodeSequence"].element is ds["ProcedureCodeSequence"]


def test_binary_and_private_keys() -> None:
    ds = identifier("IMAGE")
    ds.add_new(0x00091010, "LO", "private value")
    ds.add_new(0x00420011, "OB", b"\x00\x01")
    by_tag = {k.tag: k for k in parse_identifier(ds, STUDY_FIND).keys}
    assert (by_tag[0x00091010].keyword, by_tag[0x00091010].vr,
            by_tag[0x00091010].value) == ("", "LO", "private value")
    assert (by_tag[0x00420011].vr, by_tag[0x00420011].value) == ("OB", "")


def test_an_undecodable_identifier_is_an_invalid_query() -> None:
    ds = identifier("STUDY")
    # (0028,0010) Rows, US, with 3 bytes: no whole number of values
    ds[0x00280010] = RawDataElement(Tag(0x00280010), "US", 3, b"\x01\x02\x03", 0, False, True)
    with pytest.raises(InvalidQuery, match="identifier cannot be decoded"):
        parse_identifier(ds, STUDY_FIND)
