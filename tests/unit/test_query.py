"""services/query.py: QueryService.find/resolve/validate over a real index (tmp SQLite,
written by IndexRepository) holding two patients, three studies and five instances."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from pacs_server.config import QueryConfig
from pacs_server.dicom.identifiers import parse_identifier
from pacs_server.errors import InvalidQuery, TooManyMatches
from pacs_server.index.records import InstanceRecord
from pacs_server.index.repository import IndexRepository
from pacs_server.services.query import FindRequest, QueryService
from support.index import index_record, sqlite_index
from support.instances import encode
from support.scu import identifier

ALWAYS = {"QueryRetrieveLevel", "RetrieveAETitle", "InstanceAvailability"}


@dataclass
class Index:
    repo: IndexRepository
    records: dict[str, InstanceRecord]       # label → what was indexed

    def service(self, **cfg: Any) -> QueryService:
        return QueryService(self.repo, QueryConfig(**cfg), "PACS")

    def study(self, label: str) -> str:
        return self.records[label].study_instance_uid


def header(**attrs: Any) -> bytes:
    ds = Dataset()
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return encode(ds)


@pytest.fixture
async def index(tmp_path: Path) -> AsyncIterator[Index]:
    async with sqlite_index(tmp_path / "pacs.db") as repo:
        yield Index(repo, await add_records(repo))


async def add_records(repo: IndexRepository) -> dict[str, InstanceRecord]:
    """P-A: a CT+MR study of 3 instances and a one-CT study; P-B: one CT study."""
    s1_values = {"study_date": "20230115", "study_time": "230000",
                 "accession_number": "ACC-1", "study_description": "CT HEAD"}
    s1, ct, mr = generate_uid(), generate_uid(), generate_uid()
    clinic = header(InstitutionName="City Clinic")
    records = {
        "A-CT1": index_record(patient="P-A", name="Smith^John", study=s1, series=ct,
                              study_values=s1_values, instance_values={"instance_number": 1},
                              header=clinic),
        "A-CT2": index_record(patient="P-A", name="Smith^John", study=s1, series=ct,
                              study_values=s1_values, instance_values={"instance_number": 2},
                              header=clinic),
        "A-MR": index_record(patient="P-A", name="Smith^John", study=s1, series=mr,
                             modality="MR", sop_class="1.2.840.10008.5.1.4.1.1.4",
                             study_values=s1_values, header=clinic),
        "A2-CT": index_record(patient="P-A", name="Smith^John",
                              study_values={"study_date": "20230116",
                                            "study_time": "050000"}),
        "B-CT": index_record(patient="P-B", name="Müller^Jörg",
                             study_values={"study_date": "20230320", "study_time": "143000",
                                           "accession_number": "ACC-2"},
                             header=header(InstitutionName="Town Hospital")),
    }
    for rec in records.values():
        await repo.add_instance(rec)
    return records


def request(level: str, model: str = "STUDY", combined: bool = False, **keys: Any) -> FindRequest:
    """The FindRequest the C-FIND handler builds from an identifier with `keys`."""
    sop_class = (StudyRootQueryRetrieveInformationModelFind if model == "STUDY"
                 else PatientRootQueryRetrieveInformationModelFind)
    return parse_identifier(identifier(level, **keys), str(sop_class), combined)


async def find(svc: QueryService, req: FindRequest, batch: int = 200) -> list[Dataset]:
    return [ds async for rows in svc.find(req, batch) for ds in rows]


async def test_study_level_returns_the_requested_keys(index: Index) -> None:
    (r,) = await find(index.service(), request(
        "STUDY", PatientID="P-A", StudyInstanceUID=index.study("A-CT1"), StudyDate="",
        AccessionNumber="", NumberOfStudyRelatedInstances="",
        NumberOfStudyRelatedSeries="", ModalitiesInStudy=""))
    assert {e.keyword for e in r} == ALWAYS | {
        "PatientID", "StudyInstanceUID", "StudyDate", "AccessionNumber",
        "NumberOfStudyRelatedInstances", "NumberOfStudyRelatedSeries", "ModalitiesInStudy"}
    assert (r.QueryRetrieveLevel, r.RetrieveAETitle, r.InstanceAvailability) == (
        "STUDY", "PACS", "ONLINE")
    assert (r.StudyDate, r.AccessionNumber) == ("20230115", "ACC-1")
    assert (int(r.NumberOfStudyRelatedInstances), int(r.NumberOfStudyRelatedSeries)) == (3, 2)
    assert list(r.ModalitiesInStudy) == ["CT", "MR"]


async def test_every_study_of_a_patient(index: Index) -> None:
    found = await find(index.service(), request("STUDY", PatientID="P-A", StudyInstanceUID=""))
    assert {str(r.StudyInstanceUID) for r in found} == {index.study("A-CT1"),
                                                        index.study("A2-CT")}


async def test_series_and_image_levels(index: Index) -> None:
    svc = index.service()
    series = await find(svc, request("SERIES", StudyInstanceUID=index.study("A-CT1"),
                                     SeriesInstanceUID="", Modality="",
                                     NumberOfSeriesRelatedInstances=""))
    assert sorted((str(s.Modality), int(s.NumberOfSeriesRelatedInstances)) for s in series) == [
        ("CT", 2), ("MR", 1)]
    ct = index.records["A-CT1"].series_instance_uid
    images = await find(svc, request("IMAGE", SeriesInstanceUID=ct, SOPInstanceUID="",
                                     InstanceNumber=""))
    assert sorted((str(i.SOPInstanceUID), int(i.InstanceNumber)) for i in images) == sorted(
        (index.records[k].sop_instance_uid, n) for k, n in (("A-CT1", 1), ("A-CT2", 2)))


async def test_results_stream_in_batches(index: Index) -> None:
    batches = [len(rows) async for rows in index.service().find(
        request("IMAGE", PatientID="P-A", SOPInstanceUID=""), batch=2)]
    assert sum(batches) == 4 and max(batches) <= 2


@pytest.mark.parametrize(("sensitive", "name", "patients"), [
    (False, "smi*", ["P-A"]), (False, "SMITH^JOHN", ["P-A"]), (False, "müller*", ["P-B"]),
    (True, "smi*", []), (True, "Smith^John", ["P-A"]), (True, "M?ller*", ["P-B"]),
])
async def test_person_name_matching(index: Index, sensitive: bool, name: str,
                                    patients: list[str]) -> None:
    found = await find(index.service(case_sensitive_names=sensitive), request(
        "PATIENT", model="PATIENT", PatientName=name, PatientID=""))
    assert [str(r.PatientID) for r in found] == patients


async def test_reconfigure_takes_effect_on_the_next_query(index: Index) -> None:
    svc = index.service()
    query = request("PATIENT", model="PATIENT", PatientName="SMITH*", PatientID="")
    assert len(await find(svc, query)) == 1
    svc.reconfigure(QueryConfig(case_sensitive_names=True))
    assert await find(svc, query) == []


async def test_a_key_without_a_column_is_matched_against_the_stored_header(
        index: Index) -> None:
    found = await find(index.service(), request("STUDY", InstitutionName="City*",
                                                StudyInstanceUID=""))
    assert [(str(r.StudyInstanceUID), r.InstitutionName) for r in found] == [
        (index.study("A-CT1"), "City Clinic")]


async def test_keys_below_the_query_level_are_returned_empty_not_matched(
        index: Index) -> None:
    """PS3.4 C.4.1.2.1: a SERIES attribute in a STUDY query does not narrow it."""
    found = await find(index.service(), request("STUDY", PatientID="P-A", Modality="MR",
                                                StudyInstanceUID=""))
    assert len(found) == 2
    assert all(r.Modality in (None, "") for r in found)


async def test_non_ascii_results_say_utf8(index: Index) -> None:
    (r,) = await find(index.service(), request("PATIENT", model="PATIENT", PatientID="P-B",
                                               PatientName=""))
    assert str(r.PatientName) == "Müller^Jörg"
    assert r.SpecificCharacterSet == "ISO_IR 192"
    (ascii_only,) = await find(index.service(), request("PATIENT", model="PATIENT",
                                                        PatientID="P-B"))
    assert "SpecificCharacterSet" not in ascii_only


async def test_combined_date_time_only_when_negotiated(index: Index) -> None:
    """PS3.4 C.2.2.2.5.1: 20230115-20230116 with 2200-0600 is one span of time."""
    keys = {"StudyDate": "20230115-20230116", "StudyTime": "2200-0600", "StudyInstanceUID": ""}
    svc = index.service()
    assert await find(svc, request("STUDY", **keys)) == []
    combined = await find(svc, request("STUDY", combined=True, **keys))
    assert {str(r.StudyInstanceUID) for r in combined} == {index.study("A-CT1"),
                                                           index.study("A2-CT")}


async def test_max_results_yields_that_many_then_refuses(index: Index) -> None:
    svc = index.service(max_results=2)
    got: list[Dataset] = []
    with pytest.raises(TooManyMatches, match="more than 2 matches"):
        async for rows in svc.find(request("IMAGE", PatientID="P-A", SOPInstanceUID="")):
            got.extend(rows)
    assert len(got) == 2
    exactly = await find(svc, request("STUDY", PatientID="P-A", StudyInstanceUID=""))
    assert len(exactly) == 2                      # max_results matches: no failure


@pytest.mark.parametrize(("level", "model", "message"), [
    ("FRAME", "STUDY", "not valid"),
    ("PATIENT", "STUDY", "Study Root has no PATIENT level"),
])
async def test_invalid_levels(index: Index, level: str, model: str, message: str) -> None:
    svc = index.service()
    req = request(level, model=model, PatientID="P-A")
    with pytest.raises(InvalidQuery, match=message):
        svc.validate(req)
    with pytest.raises(InvalidQuery, match=message):
        await find(svc, req)
    with pytest.raises(InvalidQuery, match=message):
        await svc.resolve(req)


async def test_resolve_a_study_to_its_stored_instances(index: Index) -> None:
    refs = await index.service().resolve(request("STUDY", StudyInstanceUID=index.study("A-CT1")))
    expected = [index.records[k] for k in ("A-CT1", "A-CT2", "A-MR")]
    assert sorted((r.sop_instance_uid, r.sop_class_uid, r.path, r.size) for r in refs) == sorted(
        (e.sop_instance_uid, e.sop_class_uid, str(e.rel_path), e.size) for e in expected)


async def test_resolve_still_matches_a_key_against_the_stored_header(index: Index) -> None:
    """A retrieve's rows carry only where each instance lives, unless a key needs the
    stored header (IndexReader.find refs_only): then it is read and matched."""
    svc = index.service()
    clinic = await svc.resolve(request("PATIENT", model="PATIENT", PatientID="P-A",
                                       InstitutionName="City*"))
    assert sorted(r.sop_instance_uid for r in clinic) == sorted(
        index.records[k].sop_instance_uid for k in ("A-CT1", "A-CT2", "A-MR"))
    assert await svc.resolve(request("PATIENT", model="PATIENT", PatientID="P-A",
                                     InstitutionName="Town*")) == []


async def test_resolve_a_patient(index: Index) -> None:
    refs = await index.service().resolve(request("PATIENT", model="PATIENT", PatientID="P-A"))
    assert len(refs) == 4


async def test_resolve_of_nothing(index: Index) -> None:
    assert await index.service().resolve(request("STUDY", StudyInstanceUID="1.2.3.4")) == []


async def test_resolve_needs_a_key(index: Index) -> None:
    with pytest.raises(InvalidQuery, match="at least one unique key"):
        await index.service().resolve(request("STUDY", StudyInstanceUID=""))
