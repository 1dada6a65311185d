"""Patient identity over the network: two studies without a PatientID stay two patients.

pydicom's test-SR.dcm (PatientID empty) and ExplVR_BigEnd.dcm (PatientID missing) are
stored with a pynetdicom SCU, then every level is asked in both information models:
each study must come back with its own patient's name, never the other's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from support.scu import Scu
from support.server import RunningServer

FIND_P = PatientRootQueryRetrieveInformationModelFind
FIND_S = StudyRootQueryRetrieveInformationModelFind
FILES = ("test-SR.dcm", "ExplVR_BigEnd.dcm")
PENDING = (0xFF00, 0xFF01)


@pytest.fixture
def stored(server: RunningServer, scu: Scu) -> tuple[RunningServer, dict[str, Dataset]]:
    """A server holding the two files; their datasets by Study Instance UID."""
    paths = [Path(get_testdata_file(name)) for name in FILES]   # type: ignore[arg-type]
    assert [r.status for r in scu.store(server.port, paths)] == [0, 0]
    by_study = {}
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        by_study[str(ds.StudyInstanceUID)] = ds
    return server, by_study


def c_find(port: int, model: Any, level: str, **keys: Any) -> list[Dataset]:
    query = Dataset()
    query.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(query, keyword, value)
    rsps = Scu().find(port, query, model)
    assert rsps[-1].status == 0
    return [r.identifier for r in rsps[:-1] if r.status in PENDING and r.identifier]


def test_empty_patient_ids_are_two_patients(stored: Any) -> None:
    srv, by_study = stored
    found = c_find(srv.port, FIND_P, "PATIENT", PatientID="", PatientName="",
                   NumberOfPatientRelatedStudies="")
    assert sorted(str(ds.PatientName) for ds in found) == sorted(
        str(ds.PatientName) for ds in by_study.values())
    assert [int(ds.NumberOfPatientRelatedStudies) for ds in found] == [1, 1]
    (one,) = c_find(srv.port, FIND_P, "PATIENT", PatientName="Anonymized",
                    NumberOfPatientRelatedStudies="")
    assert int(one.NumberOfPatientRelatedStudies) == 1


@pytest.mark.parametrize("model", [FIND_P, FIND_S], ids=["patient-root", "study-root"])
def test_every_level_answers_each_study_with_its_own_patient(stored: Any, model: Any) -> None:
    srv, by_study = stored
    studies = c_find(srv.port, model, "STUDY", StudyInstanceUID="", PatientName="",
                     PatientID="")
    assert {str(ds.StudyInstanceUID): str(ds.PatientName) for ds in studies} == {
        uid: str(ds.PatientName) for uid, ds in by_study.items()}
    for uid, sent in by_study.items():
        for level, extra in (("STUDY", {}), ("SERIES", {"SeriesInstanceUID": ""}),
                             ("IMAGE", {"SOPInstanceUID": ""})):
            (answer,) = c_find(srv.port, model, level, StudyInstanceUID=uid,
                               PatientName="", PatientID="", **extra)
            assert str(answer.PatientName) == str(sent.PatientName), (level, uid)
            assert str(answer.PatientID) == str(sent.get("PatientID", "")), (level, uid)
        # Matching on the name finds this study only, at every level below PATIENT.
        name = str(sent.PatientName)
        for level in ("STUDY", "SERIES", "IMAGE"):
            found = c_find(srv.port, model, level, PatientName=name, StudyInstanceUID="")
            assert {str(ds.StudyInstanceUID) for ds in found} == {uid}, (level, name)
