"""services/worklist_import.py: JSON and DICOM worklist files into checked items."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from pacs_server.errors import InvalidWorklistItem
from pacs_server.services.worklist_import import items_from_json, load_items
from support.dcmtk import tool

EXAMPLE = {"patientId": "12345", "patientName": "DOE^JOHN", "patientBirthDate": "19800101",
           "patientSex": "M", "studyInstanceUid": "1.2.3.4.5.6.7.8.9",
           "accessionNumber": "ACC001", "requestedProcedureId": "RP001",
           "requestedProcedureDescription": "CT Abdomen", "scheduledStationAeTitle": "CT_01",
           "scheduledProcedureStepStartDate": "20241220",
           "scheduledProcedureStepStartTime": "100000", "modality": "CT",
           "scheduledPerformingPhysicianName": "SMITH^ANNA",
           "scheduledProcedureStepId": "SPS001",
           "scheduledProcedureStepDescription": "CT Abdomen"}
DUMPS = Path("/usr/share/doc/dcmtk/examples/wlistdb/OFFIS")


def one(obj: Any) -> Dataset:
    ((_, ds),) = items_from_json(json.dumps(obj), "in.json")
    return ds


def refused(obj: Any) -> str:
    with pytest.raises(InvalidWorklistItem) as info:
        items_from_json(json.dumps(obj), "in.json")
    return str(info.value)


def test_the_issue_example_maps_to_keywords() -> None:
    ds = one(EXAMPLE)
    assert ds.PatientID == "12345" and ds.PatientName == "DOE^JOHN"
    assert ds.StudyInstanceUID == "1.2.3.4.5.6.7.8.9" and ds.RequestedProcedureID == "RP001"
    assert ds.RequestedProcedureDescription == "CT Abdomen"
    (step,) = ds.ScheduledProcedureStepSequence
    assert step.ScheduledStationAETitle == "CT_01" and step.Modality == "CT"
    assert step.ScheduledProcedureStepStartDate == "20241220"
    assert step.ScheduledProcedureStepStartTime == "100000"
    assert step.ScheduledPerformingPhysicianName == "SMITH^ANNA"
    assert step.ScheduledProcedureStepID == "SPS001"
    assert "Modality" not in ds and "ScheduledStationAETitle" not in ds


def test_keywords_sequences_lists_and_person_name_groups() -> None:
    ds = one({"PatientID": "1", "PatientName": {"Alphabetic": "Yamada^Tarou",
                                                 "Ideographic": "山田^太郎"},
              "ScheduledProcedureStepSequence": [{
                  "ScheduledProcedureStepStartDate": "20241220",
                  "ScheduledStationAETitle": ["A1", "A2"],
                  "ScheduledProtocolCodeSequence": [{"CodeValue": "X1",
                                                     "CodingSchemeDesignator": "99"}]}],
              "modality": "MR"})
    assert ds.PatientName.ideographic == "山田^太郎"
    (step,) = ds.ScheduledProcedureStepSequence
    assert list(step.ScheduledStationAETitle) == ["A1", "A2"] and step.Modality == "MR"
    assert step.ScheduledProtocolCodeSequence[0].CodeValue == "X1"


def test_missing_study_uid_is_generated() -> None:
    a = one({**EXAMPLE, "studyInstanceUid": ""})
    b = one({k: v for k, v in EXAMPLE.items() if k != "studyInstanceUid"})
    assert a.StudyInstanceUID != b.StudyInstanceUID
    assert pydicom.uid.UID(a.StudyInstanceUID).is_valid


@pytest.mark.parametrize("change, words", [
    ({"patientId": None}, "PatientID: missing"),
    ({"scheduledProcedureStepStartDate": None}, "ScheduledProcedureStepStartDate: missing"),
    ({"scheduledProcedureStepStartDate": "2024-12-20"}, "scheduledProcedureStepStartDate"),
    ({"scheduledProcedureStepStartDate": "20240230"}, "not a date"),
    ({"scheduledProcedureStepStartTime": "250000"}, "scheduledProcedureStepStartTime"),
    ({"scheduledProcedureStepStartTime": "106000"}, "Invalid value for VR TM"),
    ({"accessionNumber": "A" * 17}, "accessionNumber: The value length (17) exceeds"),
    ({"studyInstanceUid": "1.2.x"}, "studyInstanceUid"),
    ({"colour": "blue"}, "colour: unknown attribute keyword"),
    ({"patientSex": True}, "patientSex: expected a text or number value"),
])
def test_invalid_items_name_item_and_field(change: dict[str, Any], words: str) -> None:
    bad = {k: v for k, v in {**EXAMPLE, **change}.items() if v is not None}
    message = refused([EXAMPLE, bad])
    assert message.startswith("in.json: item 2: ")
    assert words in message
    assert "\n" not in message


def test_not_json_or_empty_list() -> None:
    assert "not valid JSON" in refused_text(b"{nope")
    assert "no items" in refused([])
    assert "expected an object" in refused([1])


def refused_text(data: bytes) -> str:
    with pytest.raises(InvalidWorklistItem) as info:
        items_from_json(data, "in.json")
    return str(info.value)


@pytest.mark.dcmtk("dump2dcm")
def test_wlmscpfs_directory_imports_as_is(tmp_path: Path) -> None:
    """dcmtk's example worklist (dump2dcm of the OFFIS .dump files), ISO_IR 100."""
    wl = tmp_path / "OFFIS"
    wl.mkdir()
    (wl / "lockfile").touch()
    for dump in sorted(DUMPS.glob("*.dump")):
        subprocess.run([tool("dump2dcm"), "-q", str(dump), str(wl / (dump.stem + ".wl"))],
                       check=True)
    items = load_items(str(tmp_path))
    assert len(items) == 10
    by_acc = {str(ds.AccessionNumber): ds for _, ds in items}
    first = by_acc["00000"]
    assert first.PatientName == "VIVALDI^ANTONIO" and "SpecificCharacterSet" not in first
    assert list(first.ScheduledProcedureStepSequence[0].ScheduledStationAETitle) == [
        "AA32", "AA33"]


def test_a_bad_wl_file_names_the_file(tmp_path: Path) -> None:
    ds = Dataset()
    ds.PatientID = "X"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.31"
    ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    pydicom.dcmwrite(tmp_path / "a.wl", ds, enforce_file_format=True)
    with pytest.raises(InvalidWorklistItem, match=r"a\.wl: ScheduledProcedureStepStartDate"):
        load_items(str(tmp_path))
    (tmp_path / "junk.wl").write_bytes(b"\x00" * 10)
    (tmp_path / "a.wl").unlink()
    with pytest.raises(InvalidWorklistItem, match="junk.wl"):
        load_items(str(tmp_path))
