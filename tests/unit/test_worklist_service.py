"""services/worklist.py and worklist_items.py: matching a stored item against an MWL
identifier (PS3.4 C.2.2.2, sequence matching C.2.2.2.6) and building the response."""

from __future__ import annotations

import json
import warnings
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from pacs_server.errors import InvalidQuery
from pacs_server.services.answers import to_dataset
from pacs_server.services.worklist import parse_query, stored_form
from pacs_server.services.worklist_import import items_from_json
from pacs_server.services.worklist_items import Item, item_matches, load_item, response

ITEM = {"patientId": "P1", "patientName": "Müller^Jörg", "accessionNumber": "ACC1",
        "studyInstanceUid": "1.2.3", "referringPhysicianName": "HOUSE^GREGORY",
        "scheduledStationAeTitle": ["CT_01", "CT_02"], "scheduledStationName": "ROOM1",
        "scheduledProcedureStepStartDate": "20241220",
        "scheduledProcedureStepStartTime": "231500", "modality": "CT",
        "scheduledPerformingPhysicianName": "SMITH^ANNA", "scheduledProcedureStepId": "S1",
        "scheduledProcedureStepStatus": "SCHEDULED",
        "ScheduledProtocolCodeSequence": [{"CodeValue": "P1", "CodingSchemeDesignator": "L"},
                                          {"CodeValue": "P2", "CodingSchemeDesignator": "L"}]}


@pytest.fixture
def dataset() -> Dataset:
    ((_, ds),) = items_from_json(json.dumps(ITEM), "t")
    return ds


@pytest.fixture
def item(dataset: Dataset) -> Item:
    """The item as a C-FIND reads it back from the index."""
    return load_item(stored_form(dataset)[1])


def q(top: dict[str, Any] | None = None, **step: Any) -> Dataset:
    ds = Dataset()
    for kw, value in (top or {}).items():
        setattr(ds, kw, value)
    if step is not None:
        sps = Dataset()
        for kw, value in step.items():
            setattr(sps, kw, value)
        ds.ScheduledProcedureStepSequence = Sequence([sps])
    return ds


@pytest.mark.parametrize("top, step, expected", [
    ({"PatientName": "müller*"}, {}, True),                 # PN case-insensitive
    ({"PatientName": "M?LLER^J?RG"}, {}, True),
    ({"PatientName": "MEIER*"}, {}, False),
    ({"PatientID": "P1", "AccessionNumber": "ACC1"}, {}, True),
    ({"PatientID": "p1"}, {}, False),                         # LO is case-sensitive
    ({"StudyInstanceUID": "9.9\\1.2.3"}, {}, True),           # UID list
    ({"ReferringPhysicianName": "house^*"}, {}, True),
    ({}, {"ScheduledStationAETitle": "CT_02"}, True),         # one of several values
    ({}, {"ScheduledStationAETitle": "CT_0*"}, True),
    ({}, {"ScheduledStationAETitle": "MR_01"}, False),
    ({}, {"ScheduledStationName": "ROOM1"}, True),
    ({}, {"ScheduledProcedureStepStartDate": "20241201-20241231"}, True),
    ({}, {"ScheduledProcedureStepStartDate": "-20241219"}, False),
    ({}, {"ScheduledProcedureStepStartTime": "2300-2359"}, True),
    ({}, {"ScheduledProcedureStepStartTime": "23"}, True),     # lower precision
    ({}, {"ScheduledPerformingPhysicianName": "SMITH^ANNA"}, True),
    ({}, {"ScheduledProcedureStepID": "S2"}, False),
    ({}, {"ScheduledProcedureStepStatus": "SCHEDULED"}, True),
    ({}, {"Modality": "CT", "ScheduledProcedureStepStatus": "STARTED"}, False),
    ({}, {"Modality": ""}, True),                              # universal
])
def test_matching(item: Item, top: dict[str, Any], step: dict[str, Any],
                  expected: bool) -> None:
    assert item_matches(item, q(top, **step)) is expected


def test_nested_sequence_matching(item: Item) -> None:
    code = Dataset()
    code.CodeValue = "P2"
    ds = q(Modality="CT")
    ds.ScheduledProcedureStepSequence[0].ScheduledProtocolCodeSequence = Sequence([code])
    assert item_matches(item, ds)
    code.CodeValue = "P3"
    assert not item_matches(item, ds)
    # An empty item (or no item) is a universal match.
    ds.ScheduledProcedureStepSequence[0].ScheduledProtocolCodeSequence = Sequence([Dataset()])
    assert item_matches(item, ds)


def test_combined_date_time(item: Item) -> None:
    ds = q(ScheduledProcedureStepStartDate="20241220-20241221",
           ScheduledProcedureStepStartTime="2200-0600")
    assert item_matches(item, ds, combined=True)
    assert not item_matches(item, ds, combined=False)


def test_response_holds_exactly_the_requested_keys(item: Item) -> None:
    ds = q({"PatientName": "", "PatientID": "", "PatientWeight": ""},
           Modality="", ScheduledStationAETitle="", ScheduledProcedureStepEndDate="")
    out = to_dataset(response(item, ds))
    assert [e.keyword for e in out] == ["SpecificCharacterSet", "PatientName", "PatientID",
                                        "PatientWeight", "ScheduledProcedureStepSequence"]
    assert out.SpecificCharacterSet == "ISO_IR 192"           # non-ASCII name
    assert out.PatientWeight is None                          # requested, the item has none
    (step,) = out.ScheduledProcedureStepSequence
    assert [e.keyword for e in step] == ["Modality", "ScheduledStationAETitle",
                                         "ScheduledProcedureStepEndDate"]
    assert list(step.ScheduledStationAETitle) == ["CT_01", "CT_02"]
    assert step.ScheduledProcedureStepEndDate is None


def test_response_with_an_empty_step_item(item: Item) -> None:
    out = to_dataset(response(item, q({"AccessionNumber": ""})))
    (step,) = out.ScheduledProcedureStepSequence
    assert step.ScheduledProcedureStepID == "S1"
    assert len(step.ScheduledProtocolCodeSequence) == 2       # stored items whole
    assert step.ScheduledProcedureStepEndTime is None          # Table K.6-1 key, zero length
    assert "SpecificCharacterSet" not in out                   # ASCII only


def test_stored_form_columns(dataset: Dataset) -> None:
    columns, data = stored_form(dataset)
    assert columns["patient_name_norm"] == "müller^jörg"
    assert columns["station_ae"] == "CT_01\\CT_02"
    assert columns["start_date"] == "20241220" and columns["sps_status"] == "SCHEDULED"
    assert Dataset.from_json(data) == dataset


@pytest.mark.parametrize("step", [
    None,
    {"ScheduledProcedureStepStartDate": "2024-12"},
    {"ScheduledProcedureStepStartTime": "ab"},
])
def test_invalid_queries(step: dict[str, str] | None) -> None:
    bad = None
    if step is not None:
        with warnings.catch_warnings():     # as received: pydicom would only warn
            warnings.simplefilter("ignore")
            bad = q(**step)
    with pytest.raises(InvalidQuery):
        parse_query(bad)


def test_two_items_in_a_sequence_key_is_invalid() -> None:
    ds = q(Modality="CT")
    ds.ScheduledProcedureStepSequence.append(Dataset())
    with pytest.raises(InvalidQuery, match="more than one item"):
        parse_query(ds)
