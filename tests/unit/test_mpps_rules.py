"""services/mpps_rules.py: the attribute rules of PS3.4 Table F.7.2-1."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from pacs_server.errors import (
    AttributeNotAllowed,
    InvalidAttributeValue,
    MissingAttribute,
    MissingAttributeValue,
)
from pacs_server.services import mpps_rules as rules
from support.instances import lenient_pydicom


def item(**values: object) -> Dataset:
    ds = Dataset()
    with lenient_pydicom():          # the tests build deliberately invalid values
        for key, value in values.items():
            setattr(ds, key, value)
    return ds


def series(**values: object) -> Dataset:
    base = {"ProtocolName": "P", "SeriesInstanceUID": "1.2.3", "ReferencedImageSequence":
            Sequence([item(ReferencedSOPClassUID="1.2", ReferencedSOPInstanceUID="1.2.4")])}
    base.update(values)
    return item(**{k: v for k, v in base.items() if v is not None})


def create(**values: object) -> Dataset:
    base: dict[str, object] = {
        "ScheduledStepAttributesSequence": Sequence([item(StudyInstanceUID="1.2.3.4",
                                                          AccessionNumber="A1",
                                                          ScheduledProcedureStepID="S1")]),
        "PerformedProcedureStepID": "PPS1", "PerformedStationAETitle": "CT_01",
        "PerformedProcedureStepStartDate": "20241220",
        "PerformedProcedureStepStartTime": "101500",
        "PerformedProcedureStepStatus": "IN PROGRESS", "Modality": "CT",
    }
    base.update(values)
    return item(**{k: v for k, v in base.items() if v is not None})


def test_a_complete_create_passes() -> None:
    rules.check_create(create())


def test_missing_type1_names_every_tag() -> None:
    with pytest.raises(MissingAttribute) as caught:
        rules.check_create(create(Modality=None, PerformedProcedureStepStartTime=None))
    assert caught.value.attribute_tags == [0x00400245, 0x00080060]
    assert str(caught.value) == "N-CREATE: missing (0040,0245) (0008,0060)"


def test_missing_nested_type1_lists_its_sequence() -> None:
    ds = create(PerformedSeriesSequence=Sequence([series(SeriesInstanceUID=None)]))
    with pytest.raises(MissingAttribute) as caught:
        rules.check_create(ds)
    assert caught.value.attribute_tags == [0x00400340]
    assert "(0040,0340)>(0020,000E)" in str(caught.value)


def test_missing_reference_uid_in_a_scheduled_step() -> None:
    step = item(StudyInstanceUID="1.2.3",
                ReferencedStudySequence=Sequence([item(ReferencedSOPClassUID="1.2")]))
    with pytest.raises(MissingAttribute) as caught:
        rules.check_create(create(ScheduledStepAttributesSequence=Sequence([step])))
    assert "(0040,0270)>(0008,1110)>(0008,1155)" in str(caught.value)


def test_empty_type1_is_a_missing_value() -> None:
    with pytest.raises(MissingAttributeValue) as caught:
        rules.check_create(create(PerformedStationAETitle=""))
    assert caught.value.attribute_tags == [0x00400241]


def test_scheduled_step_sequence_needs_an_item() -> None:
    with pytest.raises(MissingAttributeValue):
        rules.check_create(create(ScheduledStepAttributesSequence=Sequence()))


def test_type2_attributes_may_be_left_out() -> None:
    # PatientName, StudyID, PerformedSeriesSequence... are Type 2: not required here.
    rules.check_create(create())


@pytest.mark.parametrize("status", ["COMPLETED", "DISCONTINUED", "in progress", "STARTED"])
def test_create_must_be_in_progress(status: str) -> None:
    with pytest.raises(InvalidAttributeValue, match="PerformedProcedureStepStatus"):
        rules.check_create(create(PerformedProcedureStepStatus=status))


@pytest.mark.parametrize(("keyword", "value"), [
    ("PerformedProcedureStepStartDate", "2024-12-20"),
    ("PerformedProcedureStepStartDate", "20241232"),
    ("PerformedProcedureStepStartTime", "1015XX"),
    ("PerformedProcedureStepID", "X" * 17),
    ("PerformedStationAETitle", "A" * 17),
    ("Modality", "ct"),
])
def test_bad_values_at_create(keyword: str, value: str) -> None:
    with pytest.raises(InvalidAttributeValue, match=keyword):
        rules.check_create(create(**{keyword: value}))


def test_bad_value_in_a_scheduled_step() -> None:
    step = item(StudyInstanceUID="1.2.x")
    with pytest.raises(InvalidAttributeValue, match="StudyInstanceUID"):
        rules.check_create(create(ScheduledStepAttributesSequence=Sequence([step])))


def test_not_settable_attributes_are_refused_by_tag() -> None:
    mods = item(PatientID="9", ScheduledStepAttributesSequence=Sequence(),
                PerformedProcedureStepDescription="ok")
    with pytest.raises(AttributeNotAllowed) as caught:
        rules.check_modification(mods)
    assert caught.value.attribute_tags == [0x00100020, 0x00400270]


def test_other_attributes_may_be_set() -> None:
    # Settable ones, a retired Radiation Dose attribute, a private one: all accepted.
    mods = item(PerformedProcedureStepDescription="x", TotalTimeOfFluoroscopy=12,
                CommentsOnThePerformedProcedureStep="c")
    mods.add_new(0x00091010, "LO", "private")
    rules.check_modification(mods)


def test_set_status_must_be_known() -> None:
    with pytest.raises(InvalidAttributeValue):
        rules.check_modification(item(PerformedProcedureStepStatus="DONE"))


def test_set_checks_nested_type1_of_the_series() -> None:
    mods = item(PerformedSeriesSequence=Sequence([series(ProtocolName=None)]))
    with pytest.raises(MissingAttributeValue) as caught:   # 0120H is no N-SET status
        rules.check_modification(mods)
    assert caught.value.attribute_tags == [0x00400340]


def finished(**values: object) -> Dataset:
    base: dict[str, object] = {"PerformedProcedureStepEndDate": "20241220",
                               "PerformedProcedureStepEndTime": "103000",
                               "PerformedSeriesSequence": Sequence([series()])}
    base.update(values)
    return create(**{k: v for k, v in base.items() if v is not None})


def test_final_state_complete() -> None:
    rules.check_final(finished(), "COMPLETED")
    rules.check_final(finished(), "DISCONTINUED")


def test_completed_needs_a_series() -> None:
    with pytest.raises(MissingAttributeValue) as caught:
        rules.check_final(finished(PerformedSeriesSequence=Sequence()), "COMPLETED")
    assert caught.value.attribute_tags == [0x00400340]
    with pytest.raises(MissingAttributeValue):
        rules.check_final(finished(PerformedSeriesSequence=None), "COMPLETED")


def test_discontinued_may_have_no_series() -> None:
    rules.check_final(finished(PerformedSeriesSequence=Sequence()), "DISCONTINUED")


@pytest.mark.parametrize("status", ["COMPLETED", "DISCONTINUED"])
def test_final_needs_end_date_and_time(status: str) -> None:
    with pytest.raises(MissingAttributeValue) as caught:
        rules.check_final(finished(PerformedProcedureStepEndTime=""), status)
    assert caught.value.attribute_tags == [0x00400251]


def test_apply_modification_replaces_and_empties() -> None:
    current = create(PerformedProcedureStepDescription="old",
                     PerformedSeriesSequence=Sequence([series(), series()]))
    mods = item(PerformedProcedureStepDescription="",
                PerformedSeriesSequence=Sequence([series(ProtocolName="NEW")]))
    merged = rules.apply_modification(current, mods)
    assert merged.PerformedProcedureStepDescription == ""
    assert [s.ProtocolName for s in merged.PerformedSeriesSequence] == ["NEW"]
    assert current.PerformedProcedureStepDescription == "old"      # a new dataset
    assert merged.Modality == "CT"
