"""dcmtk findscu / movescu / getscu against a running server (PS3.4 Annex C).

One server per module holds a small, fixed corpus stored through C-STORE; each test asks
dcmtk a question and checks every returned value against what was stored. findscu writes
its responses with `-X -od DIR` and they are read back with pydicom; statuses come from
the `-d` dump of each incoming response.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.charset import convert_encodings
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from pydicom.valuerep import PersonName

from pacs_server.config import Config
from support.archive import archived_by_uid
from support.config import FAST_STORAGE, peer, server_config
from support.dcmtk import QR_TOOLS, Storescp, ToolResult, findscu, getscu, movescu, require_dcmtk
from support.instances import CT_IMAGE, MR_IMAGE, DicomFiles, bundled_dataset, dataset_bytes
from support.polling import free_port
from support.scp import StorageScp
from support.scu import Scu
from support.server import RunningServer

pytestmark = pytest.mark.dcmtk(*QR_TOOLS)

SUCCESS, PENDING, CANCEL = 0x0000, 0xFF00, 0xFE00
CHARSET_FILES = {"JP": "chrH31.dcm", "KO": "chrKoreanMulti.dcm", "RU": "chrRuss.dcm",
                 "X1": "chrX1.dcm", "GR": "chrGreek.dcm"}


# --------------------------------------------------------------------------- corpus

@dataclass
class Corpus:
    """What the module's server holds: label → the dataset exactly as it was sent."""

    server: RunningServer
    root: Path
    items: dict[str, Dataset] = field(default_factory=dict)
    dest: Storescp | None = None
    pydest: StorageScp | None = None
    dead_port: int = 0

    def __getitem__(self, label: str) -> Dataset:
        return self.items[label]

    def study(self, label: str) -> str:
        return str(self.items[label].StudyInstanceUID)

    def labels_of_study(self, label: str) -> list[str]:
        uid = self.study(label)
        return [k for k, ds in self.items.items() if ds.StudyInstanceUID == uid]

    def outdir(self, name: str) -> Path:
        d = self.root / "out" / f"{name}-{time.monotonic_ns()}"
        d.mkdir(parents=True)
        return d


def _patient(pid: str, name: str, birth: str, sex: str) -> dict[str, Any]:
    return {"PatientID": pid, "PatientName": name, "PatientBirthDate": birth, "PatientSex": sex}


def _study(date: str, time_: str, accession: str, study_id: str, description: str,
           referring: str) -> dict[str, Any]:
    return {"StudyInstanceUID": generate_uid(), "StudyDate": date, "StudyTime": time_,
            "AccessionNumber": accession, "StudyID": study_id,
            "StudyDescription": description, "ReferringPhysicianName": referring}


def _request(rp_id: str, description: str) -> Dataset:
    item = Dataset()
    item.RequestedProcedureID = rp_id
    item.RequestedProcedureDescription = description
    return item


def _build(root: Path) -> tuple[dict[str, Dataset], list[Path]]:
    """The corpus: three ASCII patients, five charset patients, one compressed and one
    Implicit VR file. Values the tests rely on are all set here."""
    a = _patient("PID-A", "Smith^John", "19700101", "M")
    b = _patient("PID-B", "Smythe^Anna", "19800202", "F")
    c = _patient("PID-C", "Jones^Bob", "19900303", "O")
    s1 = _study("20230115", "101530", "ACC-1", "S1", "CT HEAD", "Doe^Jane")
    s2 = _study("20230320", "143000", "ACC-2", "S2", "CT CHEST", "Roe^Rick")
    s3 = _study("20220601", "110120", "ACC-3", "S3", "CT ABDOMEN", "")
    s4 = _study("20230131", "235959", "XYZ-1", "S4", "MR KNEE", "")
    s5 = _study("20240229", "120000", "XYZ-2", "S5", "MIXED", "")
    s1_ct, s1_mr, s2_ct = generate_uid(), generate_uid(), generate_uid()

    def inst(template: str, patient: dict[str, Any], study: dict[str, Any], series: str,
             **attrs: Any) -> Dataset:
        return bundled_dataset(template, **patient, **study, SeriesInstanceUID=series, **attrs)

    items = {
        "A1-CT1": inst("CT_small.dcm", a, s1, s1_ct, SeriesNumber=1, InstanceNumber=1,
                       BodyPartExamined="HEAD", SeriesDescription="AX HEAD"),
        "A1-CT2": inst("CT_small.dcm", a, s1, s1_ct, SeriesNumber=1, InstanceNumber=2,
                       BodyPartExamined="HEAD", SeriesDescription="AX HEAD"),
        "A1-MR": inst("MR_small.dcm", a, s1, s1_mr, SeriesNumber=2, InstanceNumber=1,
                      BodyPartExamined="BRAIN", SeriesDescription="T2"),
        "A2-CT": inst("CT_small.dcm", a, s2, s2_ct, SeriesNumber=1, InstanceNumber=1,
                      BodyPartExamined="CHEST", InstitutionName="City Clinic"),
        "B3-CT": inst("CT_small.dcm", b, s3, generate_uid(), SeriesNumber=7,
                      InstanceNumber=3, BodyPartExamined="ABDOMEN",
                      InstitutionName="City Clinic", Manufacturer="ACME"),
        # ASCII at the top level, Cyrillic (ISO 8859-5) only inside a sequence item
        "C4-MR": inst("MR_small.dcm", c, s4, generate_uid(), SeriesNumber=1,
                      InstanceNumber=1, BodyPartExamined="KNEE",
                      SpecificCharacterSet="ISO_IR 144",
                      RequestAttributesSequence=Sequence([_request("RP-1", "Люкс колено")])),
    }
    for i, (label, name) in enumerate(CHARSET_FILES.items()):
        # Their own patients, names and character sets; study values under our control.
        items[label] = bundled_dataset(name, AccessionNumber=f"CS-{i}", StudyDate="20100101",
                                     StudyTime="120000", InstitutionName="Charset Hospital",
                                     StudyDescription="Charset", PatientBirthDate="19000101",
                                     StudyID=f"CS{i}", SeriesNumber=1, InstanceNumber=1)
    # Sent in their own transfer syntaxes: JPEG 2000 and Implicit VR Little Endian.
    items["C5-J2K"] = inst("JPEG2000.dcm", c, s5, generate_uid(), SeriesNumber=3,
                           InstanceNumber=1)
    items["C5-IMPL"] = inst("MR_small_implicit.dcm", c, s5, generate_uid(), SeriesNumber=4,
                            InstanceNumber=1)
    send = DicomFiles(root / "send")
    files = [send.save(items[k], stem=k) for k in ("C5-J2K", "C5-IMPL")]
    return items, files


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corpus]:
    require_dcmtk(QR_TOOLS)
    root = tmp_path_factory.mktemp("qr-e2e")
    dest = Storescp(root / "dest", ae_title="DEST")
    pydest = StorageScp("PYDEST", fail_classes=[CT_IMAGE])
    dead = free_port()
    srv = RunningServer(server_config(root / "server", {**FAST_STORAGE, "peers": [
        peer("DEST", dest.port), peer("PYDEST", pydest.port), peer("DEAD", dead)]}))
    try:
        srv.start()
        items, files = _build(root)
        sent = [ds for k, ds in items.items() if k not in ("C5-J2K", "C5-IMPL")]
        assert stored(srv, sent) == [0] * len(sent)
        assert [r.status for r in Scu().store(srv.port, files)] == [0, 0]
        yield Corpus(srv, root, items, dest, pydest, dead)
    finally:
        srv.stop()
        dest.stop()
        pydest.stop()


def stored(srv: RunningServer, datasets: list[Dataset]) -> list[int]:
    """C-STORE the datasets over one association; the statuses."""
    return [r.status for r in Scu().store_datasets(srv.port, datasets)]


def find(corpus: Corpus, level: str, keys: list[str], model: str = "-S",
         server: RunningServer | None = None) -> ToolResult:
    """findscu; a later `-k` replaces an earlier one, so each attribute is named once."""
    names = [k.split("=")[0] for k in keys]
    assert len(names) == len(set(names)), f"attribute named twice in {keys}"
    srv = server or corpus.server
    return findscu(srv.port, level, keys, corpus.outdir("find"), model=model)


def values(ds: Dataset, keyword: str) -> list[str]:
    """A value as a list, whatever its multiplicity."""
    value = ds.get(keyword)
    if value is None or value == "":
        return []
    return [str(v) for v in value] if isinstance(value, (list, MultiValue)) else [str(value)]


def ok(result: ToolResult) -> list[Dataset]:
    """Responses of a successful C-FIND: n pending then one success."""
    assert result.statuses == [PENDING] * len(result.responses) + [SUCCESS], result.output[-3000:]
    for rsp in result.responses:
        assert rsp.RetrieveAETitle == "PACS"
        assert rsp.InstanceAvailability == "ONLINE"
    return result.responses


def by(responses: list[Dataset], keyword: str) -> dict[str, Dataset]:
    out = {str(r[keyword].value): r for r in responses}
    assert len(out) == len(responses), f"duplicate {keyword} in the responses"
    return out


def studies(corpus: Corpus, *labels: str) -> set[str]:
    return {corpus.study(label) for label in labels}


CHARSET_STUDIES = tuple(CHARSET_FILES)


def text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value)


# --------------------------------------------------------------------------- levels

def test_patient_root_patient_level_returns_demographics_and_counts(corpus: Corpus) -> None:
    rsp = ok(find(corpus, "PATIENT", [
        "PatientID=PID-A", "PatientName", "PatientBirthDate", "PatientSex",
        "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries",
        "NumberOfPatientRelatedInstances"], model="-P"))
    assert len(rsp) == 1
    r = rsp[0]
    assert r.QueryRetrieveLevel == "PATIENT"
    assert r.PatientID == "PID-A"
    assert str(r.PatientName) == "Smith^John"
    assert r.PatientBirthDate == "19700101"
    assert r.PatientSex == "M"
    assert int(r.NumberOfPatientRelatedStudies) == 2
    assert int(r.NumberOfPatientRelatedSeries) == 3
    assert int(r.NumberOfPatientRelatedInstances) == 4


def test_patient_root_counts_of_another_patient(corpus: Corpus) -> None:
    rsp = ok(find(corpus, "PATIENT", [
        "PatientID=PID-C", "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries",
        "NumberOfPatientRelatedInstances"], model="-P"))
    assert [(int(r.NumberOfPatientRelatedStudies), int(r.NumberOfPatientRelatedSeries),
             int(r.NumberOfPatientRelatedInstances)) for r in rsp] == [(2, 3, 3)]


def test_study_root_has_no_patient_level(corpus: Corpus) -> None:
    result = find(corpus, "PATIENT", ["PatientID=PID-A", "PatientName"], model="-S")
    assert result.statuses == [0xA900]
    assert result.responses == []


def test_invalid_level_is_refused(corpus: Corpus) -> None:
    result = find(corpus, "FRAME", ["PatientID=PID-A"], model="-P")
    assert result.statuses == [0xA900]
    assert result.responses == []


@pytest.mark.parametrize("key", ["StudyDate=2020-01-01", "StudyDate=2020*", "StudyDate=-",
                                 "StudyTime=9", "PatientBirthDate=abc"])
def test_malformed_date_or_time_is_refused_with_a_reason(corpus: Corpus, key: str) -> None:
    # PS3.4 C.2.2.2.5: nothing can match a malformed range, and the SQL side could not
    # narrow on one: refused (0xA900) with an Error Comment, not answered "none".
    result = find(corpus, "STUDY", [key, "StudyInstanceUID"])
    assert result.statuses == [0xA900], result.output[-2000:]
    assert result.responses == []
    name, _, value = key.partition("=")
    assert f"{name}: '{value}' is not a" in result.output, result.output[-2000:]


@pytest.mark.parametrize("model", ["-S", "-P"])
def test_study_level_returns_every_requested_value(corpus: Corpus, model: str) -> None:
    keys = ["StudyInstanceUID", "PatientID=PID-A", "PatientName", "PatientBirthDate",
            "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "StudyDescription",
            "ReferringPhysicianName", "ModalitiesInStudy", "SOPClassesInStudy",
            "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
            "NumberOfPatientRelatedStudies", "PatientComments", "RetrieveAETitle",
            "InstanceAvailability"]
    rsp = by(ok(find(corpus, "STUDY", keys, model=model)), "StudyInstanceUID")
    assert set(rsp) == studies(corpus, "A1-CT1", "A2-CT")
    expected = {"A1-CT1": (["CT", "MR"], sorted([CT_IMAGE, MR_IMAGE]), 2, 3),
                "A2-CT": (["CT"], [CT_IMAGE], 1, 1)}
    for label, (mods, sops, n_series, n_inst) in expected.items():
        sent, r = corpus[label], rsp[corpus.study(label)]
        assert r.QueryRetrieveLevel == "STUDY"
        for kw in ("PatientID", "PatientName", "PatientBirthDate", "StudyDate", "StudyTime",
                   "AccessionNumber", "StudyID", "StudyDescription",
                   "ReferringPhysicianName"):
            assert text(r, kw) == text(sent, kw), kw
        assert values(r, "ModalitiesInStudy") == mods
        assert sorted(values(r, "SOPClassesInStudy")) == sops
        assert int(r.NumberOfStudyRelatedSeries) == n_series
        assert int(r.NumberOfStudyRelatedInstances) == n_inst
        assert int(r.NumberOfPatientRelatedStudies) == 2
        assert "PatientComments" in r and text(r, "PatientComments") == ""  # not stored
        # only what was asked, plus the attributes the SCP always adds
        assert {e.keyword for e in r} <= {*[k.split("=")[0] for k in keys],
                                          "QueryRetrieveLevel", "SpecificCharacterSet"}


@pytest.mark.parametrize("model", ["-S", "-P"])
def test_series_level_values_and_counts(corpus: Corpus, model: str) -> None:
    patient = [f"PatientID={corpus['A1-CT1'].PatientID}"] if model == "-P" else []
    rsp = by(ok(find(corpus, "SERIES", [
        *patient, f"StudyInstanceUID={corpus.study('A1-CT1')}", "SeriesInstanceUID",
        "Modality", "SeriesNumber", "SeriesDescription", "BodyPartExamined",
        "NumberOfSeriesRelatedInstances"], model=model)), "SeriesInstanceUID")
    assert set(rsp) == {str(corpus["A1-CT1"].SeriesInstanceUID),
                        str(corpus["A1-MR"].SeriesInstanceUID)}
    for label, n in (("A1-CT1", 2), ("A1-MR", 1)):
        sent, r = corpus[label], rsp[str(corpus[label].SeriesInstanceUID)]
        assert r.QueryRetrieveLevel == "SERIES"
        assert r.StudyInstanceUID == sent.StudyInstanceUID
        assert r.Modality == sent.Modality
        assert int(r.SeriesNumber) == int(sent.SeriesNumber)
        assert r.SeriesDescription == sent.SeriesDescription
        assert r.BodyPartExamined == sent.BodyPartExamined
        assert int(r.NumberOfSeriesRelatedInstances) == n


def test_series_level_across_studies_by_modality(corpus: Corpus) -> None:
    rsp = by(ok(find(corpus, "SERIES", ["Modality=MR", "SeriesInstanceUID",
                                        "StudyInstanceUID"])), "SeriesInstanceUID")
    assert set(rsp) == {str(corpus[k].SeriesInstanceUID) for k in ("A1-MR", "C4-MR",
                                                                   "C5-IMPL")}


@pytest.mark.parametrize("model", ["-S", "-P"])
def test_image_level_values(corpus: Corpus, model: str) -> None:
    sent = corpus["A1-CT1"]
    keys = [f"PatientID={sent.PatientID}", f"StudyInstanceUID={sent.StudyInstanceUID}",
            f"SeriesInstanceUID={sent.SeriesInstanceUID}", "SOPInstanceUID", "SOPClassUID",
            "InstanceNumber", "ContentDate", "ContentTime"]
    rsp = by(ok(find(corpus, "IMAGE", keys, model=model)), "SOPInstanceUID")
    assert set(rsp) == {str(corpus[k].SOPInstanceUID) for k in ("A1-CT1", "A1-CT2")}
    for label in ("A1-CT1", "A1-CT2"):
        ds, r = corpus[label], rsp[str(corpus[label].SOPInstanceUID)]
        assert r.QueryRetrieveLevel == "IMAGE"
        assert r.SOPClassUID == CT_IMAGE
        assert int(r.InstanceNumber) == int(ds.InstanceNumber)
        assert r.ContentDate == ds.ContentDate
        assert r.ContentTime == ds.ContentTime
        assert r.SeriesInstanceUID == ds.SeriesInstanceUID


# --------------------------------------------------------------------------- matching

@pytest.mark.parametrize(("query", "labels"), [
    ("Smith^John", ("A1-CT1", "A2-CT")),                # exact
    ("SMI*", ("A1-CT1", "A2-CT")),                     # prefix, case-insensitive PN
    ("Sm?th*", ("A1-CT1", "A2-CT", "B3-CT")),          # ? inside
    ("*^J*", ("A1-CT1", "A2-CT")),                     # * at both ends
    ("*e^*", ("B3-CT",)),                              # Smythe^Anna
    ("Jo?es^B?b", ("C4-MR", "C5-J2K")),
    ("*o*", ("A1-CT1", "A2-CT", "C4-MR", "C5-J2K", "JP", "X1")),
    ("Smith", ()),                                     # no implicit prefix matching
])
def test_patient_name_matching(corpus: Corpus, query: str, labels: tuple[str, ...]) -> None:
    rsp = ok(find(corpus, "STUDY", [f"PatientName={query}", "StudyInstanceUID"]))
    assert set(by(rsp, "StudyInstanceUID")) == studies(corpus, *labels)
    for r in rsp:
        sent = next(corpus[k] for k in labels if corpus.study(k) == r.StudyInstanceUID)
        assert str(r.PatientName) == str(sent.PatientName)


@pytest.mark.parametrize(("key", "labels"), [
    ("AccessionNumber=ACC-2", ("A2-CT",)),
    ("AccessionNumber=ACC-?", ("A1-CT1", "A2-CT", "B3-CT")),
    ("AccessionNumber=*-1", ("A1-CT1", "C4-MR", "KO")),                 # KO is CS-1
    ("AccessionNumber=acc-1", ()),                                # SH: case-sensitive
    ("StudyDescription=CT*", ("A1-CT1", "A2-CT", "B3-CT")),
    ("StudyDescription=*E*", ("A1-CT1", "A2-CT", "B3-CT", "C4-MR", "C5-J2K")),
    ("PatientID=PID-?", ("A1-CT1", "A2-CT", "B3-CT", "C4-MR", "C5-J2K")),
    ("StudyID=S3", ("B3-CT",)),
    ("ReferringPhysicianName=DOE^JANE", ("A1-CT1",)),
    ("ModalitiesInStudy=MR", ("A1-CT1", "C4-MR", "C5-J2K")),
    ("ModalitiesInStudy=NM", ("C5-J2K",)),
])
def test_study_level_string_matching(corpus: Corpus, key: str, labels: tuple[str, ...]) -> None:
    rsp = ok(find(corpus, "STUDY", [key, "StudyInstanceUID"]))
    assert set(by(rsp, "StudyInstanceUID")) == studies(corpus, *labels)


@pytest.mark.parametrize(("key", "labels"), [
    ("StudyDate=20230320", ("A2-CT",)),
    ("StudyDate=20230101-20230131", ("A1-CT1", "C4-MR")),
    ("StudyDate=20230115-20230115", ("A1-CT1",)),
    ("StudyDate=-20221231", ("B3-CT", *CHARSET_STUDIES)),
    ("StudyDate=20230301-", ("A2-CT", "C5-J2K")),
    ("StudyDate=20240229", ("C5-J2K",)),
    ("StudyTime=1000-1100", ("A1-CT1",)),                 # not 110120: 1100 ends at 110059
    ("StudyTime=-1100", ("A1-CT1",)),
    ("StudyTime=11", ("B3-CT",)),                         # hour precision
    ("StudyTime=1101", ("B3-CT",)),                       # minute precision
    ("StudyTime=2300-", ("C4-MR",)),
    ("StudyTime=12", ("C5-J2K", *CHARSET_STUDIES)),
    ("PatientBirthDate=19750101-19851231", ("B3-CT",)),
])
def test_date_and_time_ranges(corpus: Corpus, key: str, labels: tuple[str, ...]) -> None:
    returned = [k for k in ("StudyDate", "StudyTime") if not key.startswith(k)]
    rsp = ok(find(corpus, "STUDY", [key, "StudyInstanceUID", *returned]))
    got = by(rsp, "StudyInstanceUID")
    assert set(got) == studies(corpus, *labels)
    for label in labels:
        r = got[corpus.study(label)]
        assert r.StudyDate == corpus[label].StudyDate
        assert r.StudyTime == corpus[label].StudyTime


def test_study_uid_list(corpus: Corpus) -> None:
    uids = [corpus.study("A1-CT1"), corpus.study("B3-CT"), "1.2.3.999"]
    rsp = ok(find(corpus, "STUDY", ["StudyInstanceUID=" + "\\".join(uids), "AccessionNumber"]))
    got = by(rsp, "StudyInstanceUID")
    assert set(got) == studies(corpus, "A1-CT1", "B3-CT")
    assert got[corpus.study("A1-CT1")].AccessionNumber == "ACC-1"
    assert got[corpus.study("B3-CT")].AccessionNumber == "ACC-3"


def test_sop_instance_uid_list_at_image_level(corpus: Corpus) -> None:
    wanted = [str(corpus[k].SOPInstanceUID) for k in ("A1-CT2", "C4-MR", "KO")]
    rsp = ok(find(corpus, "IMAGE", ["SOPInstanceUID=" + "\\".join(wanted), "SOPClassUID",
                                    "InstanceNumber"]))
    got = by(rsp, "SOPInstanceUID")
    assert set(got) == set(wanted)
    for label in ("A1-CT2", "C4-MR", "KO"):
        assert got[str(corpus[label].SOPInstanceUID)].SOPClassUID == corpus[label].SOPClassUID


def test_keys_below_the_query_level_are_not_matched_but_returned_empty(corpus: Corpus) -> None:
    rsp = ok(find(corpus, "STUDY", [f"StudyInstanceUID={corpus.study('A1-CT1')}",
                                    "SeriesNumber=99", "SOPInstanceUID"]))
    assert len(rsp) == 1
    assert text(rsp[0], "SeriesNumber") == ""
    assert text(rsp[0], "SOPInstanceUID") == ""


# --------------------------------------------------------------------------- character sets

@pytest.mark.parametrize(("query", "label"), [
    ("山田*", "JP"),                                 # ideographic group, ISO 2022 IR 87
    ("やまだ^たろう", "JP"),                          # phonetic group
    ("Yamada^Tarou=山田^太郎=やまだ^たろう", "JP"),     # whole value
    ("yamada*", "JP"),                               # alphabetic group, any case
    ("Yamada^Tarou=*", "JP"),                        # ASCII, but spans the groups
    ("김희중", "KO"),                                 # ISO 2022 IR 149
    ("김*", "KO"),
    ("Люкceмбypг", "RU"),                             # ISO_IR 144, exact
    ("люкceмбypг*", "RU"),                            # lower case of the stored name
    ("ЛЮКCEМБYPГ", "RU"),                             # upper case
    ("王^小東", "X1"),                                # UTF-8 ideographic group
    ("ΔΙΟΝΥΣΙΟΣ", "GR"),                              # ISO_IR 126, upper case
])
def test_non_ascii_names_in_utf8_queries(corpus: Corpus, query: str, label: str) -> None:
    rsp = ok(find(corpus, "PATIENT", ["SpecificCharacterSet=ISO_IR 192",
                                      f"PatientName={query}", "PatientID"], model="-P"))
    sent = corpus[label]
    assert [r.PatientID for r in rsp] == [sent.PatientID]
    r = rsp[0]
    assert r.SpecificCharacterSet == "ISO_IR 192"
    assert str(r.PatientName) == str(sent.PatientName)


@pytest.mark.parametrize(("charset", "query", "label"), [
    ("ISO_IR 144", "люкceмбypг*", "RU"),                  # ISO 8859-5 bytes
    ("\\ISO 2022 IR 87", "山田^太郎", "JP"),             # JIS X 0208 with escapes
    ("\\ISO 2022 IR 149", "김희중", "KO"),                # KS X 1001 with escapes
])
def test_non_ascii_queries_in_the_names_own_character_set(corpus: Corpus, charset: str,
                                                          query: str, label: str) -> None:
    encodings = convert_encodings(charset.split("\\"))
    raw = PersonName(query).encode(encodings)
    # findscu passes the bytes of its arguments on unchanged
    key = os.fsdecode(b"PatientName=" + raw)
    rsp = ok(find(corpus, "PATIENT", [f"SpecificCharacterSet={charset}", key, "PatientID"],
                  model="-P"))
    sent = corpus[label]
    assert [r.PatientID for r in rsp] == [sent.PatientID]
    assert str(rsp[0].PatientName) == str(sent.PatientName)


def test_non_ascii_values_are_returned_in_utf8(corpus: Corpus) -> None:
    """Names from ISO 2022 and ISO 8859 datasets come back in one character set."""
    rsp = by(ok(find(corpus, "STUDY", ["StudyDate=20100101", "StudyInstanceUID",
                                       "PatientName", "PatientID", "OtherPatientNames"])),
             "StudyInstanceUID")
    assert set(rsp) == studies(corpus, *CHARSET_STUDIES)
    for label in CHARSET_STUDIES:
        sent, r = corpus[label], rsp[corpus.study(label)]
        assert r.SpecificCharacterSet == "ISO_IR 192"
        assert str(r.PatientName) == str(sent.PatientName)
        assert r.PatientID == sent.PatientID
        assert text(r, "OtherPatientNames") == text(sent, "OtherPatientNames")


def test_non_ascii_text_inside_a_returned_sequence(corpus: Corpus) -> None:
    """The item's text was stored in ISO 8859-5; it comes back decodable, in UTF-8."""
    sent = corpus["C4-MR"]
    rsp = ok(find(corpus, "IMAGE", [f"SOPInstanceUID={sent.SOPInstanceUID}", "PatientName",
                                    "RequestAttributesSequence"]))
    assert len(rsp) == 1
    r = rsp[0]
    assert r.SpecificCharacterSet == "ISO_IR 192"
    assert str(r.PatientName) == "Jones^Bob"
    assert [(i.RequestedProcedureID, i.RequestedProcedureDescription)
            for i in r.RequestAttributesSequence] == [("RP-1", "Люкс колено")]


def test_other_languages_do_not_match(corpus: Corpus) -> None:
    for query in ("田中*", "박*", "люкcембург*"):     # last: Cyrillic е/у/р, stored are Latin
        rsp = ok(find(corpus, "PATIENT", ["SpecificCharacterSet=ISO_IR 192",
                                          f"PatientName={query}"], model="-P"))
        assert rsp == [], query


# --------------------------------------------------------------------------- not indexed

@pytest.mark.parametrize(("key", "labels"), [
    ("InstitutionName=City Clinic", ("A2-CT", "B3-CT")),
    ("InstitutionName=JFK*", ("A1-CT1", "A1-CT2")),
    ("InstitutionName=*HOSPITAL", ()),                       # case-sensitive LO
    ("Manufacturer=TOSHIBA*", ("A1-MR", "C4-MR", "C5-IMPL")),
    ("Manufacturer=ACME", ("B3-CT",)),
    ("ImageType=AXIAL", ("A1-CT1", "A1-CT2", "A2-CT", "B3-CT")),   # one of several values
])
def test_attribute_only_in_the_stored_header_at_image_level(
        corpus: Corpus, key: str, labels: tuple[str, ...]) -> None:
    keyword = key.split("=")[0]
    rsp = ok(find(corpus, "IMAGE", [key, "SOPInstanceUID"]))
    got = by(rsp, "SOPInstanceUID")
    assert set(got) == {str(corpus[k].SOPInstanceUID) for k in labels}
    for label in labels:
        assert got[str(corpus[label].SOPInstanceUID)][keyword].value == corpus[label][keyword].value


@pytest.mark.parametrize(("key", "labels"), [
    ("InstitutionName=City Clinic", ("A2-CT", "B3-CT")),
    ("InstitutionName=Charset*", CHARSET_STUDIES),
    ("Manufacturer=ACME", ("B3-CT",)),
])
def test_attribute_only_in_the_stored_header_at_study_level(
        corpus: Corpus, key: str, labels: tuple[str, ...]) -> None:
    returned = [] if key.startswith("InstitutionName") else ["InstitutionName"]
    rsp = ok(find(corpus, "STUDY", [key, "StudyInstanceUID", *returned]))
    got = by(rsp, "StudyInstanceUID")
    assert set(got) == studies(corpus, *labels)
    for label in labels:
        assert got[corpus.study(label)].InstitutionName == corpus[label].InstitutionName


def test_empty_return_key_gets_the_stored_header_value(corpus: Corpus) -> None:
    sent = corpus["B3-CT"]
    rsp = ok(find(corpus, "IMAGE", [f"SOPInstanceUID={sent.SOPInstanceUID}", "Manufacturer",
                                    "InstitutionName", "StationName", "ImageType",
                                    "SliceThickness", "ImageComments", "PerformedStationName",
                                    "OtherPatientIDsSequence"]))
    assert len(rsp) == 1
    r = rsp[0]
    assert r.Manufacturer == "ACME"
    assert r.InstitutionName == "City Clinic"
    assert r.StationName == sent.StationName
    assert list(r.ImageType) == list(sent.ImageType)
    assert float(r.SliceThickness) == float(sent.SliceThickness)
    assert r.ImageComments == sent.ImageComments
    assert "PerformedStationName" in r and text(r, "PerformedStationName") == ""
    # a sequence asked for with no items comes back as stored
    assert [(i.PatientID, i.TypeOfPatientID) for i in r.OtherPatientIDsSequence] == [
        (i.PatientID, i.TypeOfPatientID) for i in sent.OtherPatientIDsSequence]
    assert len(r.OtherPatientIDsSequence) == 2


# --------------------------------------------------------------------------- configuration

async def test_case_sensitive_names_setting(corpus: Corpus, start_server: Callable[..., Any],
                                            make_cfg: Callable[..., Config]) -> None:
    srv = await start_server(make_cfg({**FAST_STORAGE, "query.case_sensitive_names": True}))
    await asyncio.to_thread(check_case_sensitive_names, corpus, srv)


def check_case_sensitive_names(corpus: Corpus, srv: RunningServer) -> None:
    sent = [corpus[k] for k in ("A1-CT1", "RU")]
    assert stored(srv, sent) == [0, 0]

    def names(server: RunningServer, query: str) -> list[str]:
        rsp = ok(find(corpus, "PATIENT", ["SpecificCharacterSet=ISO_IR 192",
                                          f"PatientName={query}", "PatientID"],
                      model="-P", server=server))
        return sorted(r.PatientID for r in rsp)

    for query, pid in (("Smith^John", "PID-A"), ("Smi*", "PID-A"),
                       ("Люкceмбypг", "SCSRUSS"), ("Люк*", "SCSRUSS")):
        assert names(srv, query) == [pid], query
    for query in ("SMITH^JOHN", "smi*", "люкceмбypг*", "ЛЮКCEМБYPГ"):
        assert names(srv, query) == [], query                      # case now matters
        assert names(corpus.server, query) != [], query            # default: it does not


async def test_max_results_caps_with_out_of_resources(
        corpus: Corpus, start_server: Callable[..., Any],
        make_cfg: Callable[..., Config]) -> None:
    srv = await start_server(make_cfg({**FAST_STORAGE, "query.max_results": 2}))
    await asyncio.to_thread(check_max_results, corpus, srv)


def check_max_results(corpus: Corpus, srv: RunningServer) -> None:
    sent = [corpus[k] for k in ("A1-CT1", "A1-CT2", "A1-MR", "A2-CT", "B3-CT")]
    assert stored(srv, sent) == [0] * 5
    over = find(corpus, "IMAGE", ["PatientID=PID-A", "SOPInstanceUID"], server=srv)
    assert over.statuses == [PENDING, PENDING, 0xA700]
    assert len(over.responses) == 2
    assert {r.SOPInstanceUID for r in over.responses} <= {
        corpus[k].SOPInstanceUID for k in ("A1-CT1", "A1-CT2", "A1-MR", "A2-CT")}
    exact = find(corpus, "STUDY", ["PatientID=PID-A", "StudyInstanceUID"], server=srv)
    assert len(ok(exact)) == 2                     # exactly max_results: no failure
    under = find(corpus, "STUDY", ["PatientID=PID-B", "StudyInstanceUID"], server=srv)
    assert len(ok(under)) == 1


# --------------------------------------------------------------------------- C-MOVE

def _same_content(archived_file: Path, received: Path) -> None:
    """Byte for byte when both files are in the same transfer syntax, else decoded."""
    a, b = pydicom.dcmread(archived_file), pydicom.dcmread(received)
    if a.file_meta.TransferSyntaxUID == b.file_meta.TransferSyntaxUID:
        assert dataset_bytes(received) == dataset_bytes(archived_file), received.name
        return
    assert b.file_meta.TransferSyntaxUID.is_compressed is False
    assert [e.tag for e in a] == [e.tag for e in b]
    for elem in a:
        assert b[elem.tag].value == elem.value, elem.tag


def test_movescu_study_to_storescp_bytes_identical(corpus: Corpus) -> None:
    assert corpus.dest is not None
    labels = corpus.labels_of_study("A1-CT1")
    result = movescu(corpus.server.port, "STUDY",
                     [f"StudyInstanceUID={corpus.study('A1-CT1')}"], "DEST")
    assert result.final_status == SUCCESS, result.output[-3000:]
    assert result.counts() == {"remaining": 0, "completed": 3, "failed": 0, "warning": 0}
    stored = archived_by_uid(corpus.server.archive)
    received = corpus.dest.files()
    for label in labels:
        uid = str(corpus[label].SOPInstanceUID)
        assert uid in received, label
        meta = pydicom.dcmread(stored[uid], stop_before_pixels=True).file_meta
        assert meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        assert dataset_bytes(received[uid]) == dataset_bytes(stored[uid]), label


def test_movescu_compressed_and_implicit_instances(corpus: Corpus) -> None:
    assert corpus.dest is not None
    result = movescu(corpus.server.port, "SERIES",
                     [f"StudyInstanceUID={corpus.study('C5-J2K')}",
                      "SeriesInstanceUID=" + "\\".join(
                          str(corpus[k].SeriesInstanceUID) for k in ("C5-J2K", "C5-IMPL"))],
                     "DEST")
    assert result.final_status == SUCCESS, result.output[-3000:]
    assert result.counts()["completed"] == 2
    stored, received = archived_by_uid(corpus.server.archive), corpus.dest.files()
    j2k = str(corpus["C5-J2K"].SOPInstanceUID)
    assert pydicom.dcmread(received[j2k]).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.91"
    for label in ("C5-J2K", "C5-IMPL"):
        uid = str(corpus[label].SOPInstanceUID)
        _same_content(stored[uid], received[uid])


def test_movescu_image_level_patient_root(corpus: Corpus) -> None:
    assert corpus.dest is not None
    sent = corpus["KO"]
    result = movescu(corpus.server.port, "IMAGE", [
        f"PatientID={sent.PatientID}", f"StudyInstanceUID={sent.StudyInstanceUID}",
        f"SeriesInstanceUID={sent.SeriesInstanceUID}",
        f"SOPInstanceUID={sent.SOPInstanceUID}"], "DEST", model="-P")
    assert result.final_status == SUCCESS, result.output[-3000:]
    assert result.counts()["completed"] == 1
    uid = str(sent.SOPInstanceUID)
    received = corpus.dest.files()[uid]
    assert dataset_bytes(received) == dataset_bytes(archived_by_uid(corpus.server.archive)[uid])
    assert str(pydicom.dcmread(received).PatientName) == str(sent.PatientName)


def test_movescu_unknown_destination(corpus: Corpus) -> None:
    result = movescu(corpus.server.port, "STUDY",
                     [f"StudyInstanceUID={corpus.study('A2-CT')}"], "NOWHERE")
    assert result.statuses == [0xA801]


def test_movescu_unreachable_destination_fails_promptly(corpus: Corpus) -> None:
    started = time.monotonic()
    result = movescu(corpus.server.port, "STUDY",
                     [f"StudyInstanceUID={corpus.study('A2-CT')}"], "DEAD", timeout=30)
    assert time.monotonic() - started < 15
    assert result.final_status == 0xA801
    assert result.statuses == [0xA801]


def test_movescu_partial_failure_names_the_failed_instances(corpus: Corpus) -> None:
    assert corpus.pydest is not None
    result = movescu(corpus.server.port, "STUDY",
                     [f"StudyInstanceUID={corpus.study('A1-CT1')}"], "PYDEST")
    assert result.final_status == 0xB000, result.output[-3000:]
    assert result.counts() == {"remaining": 0, "completed": 1, "failed": 2, "warning": 0}
    ct = {str(corpus[k].SOPInstanceUID) for k in ("A1-CT1", "A1-CT2")}
    assert set(result.failed_uids()) == ct
    assert str(corpus["A1-MR"].SOPInstanceUID) in corpus.pydest.received
    assert ct <= set(corpus.pydest.failed)


def test_movescu_all_sub_operations_failed(corpus: Corpus) -> None:
    result = movescu(corpus.server.port, "STUDY",
                     [f"StudyInstanceUID={corpus.study('B3-CT')}"], "PYDEST")
    assert result.final_status == 0xA702, result.output[-3000:]
    assert result.counts()["failed"] == 1
    assert result.failed_uids() == [str(corpus["B3-CT"].SOPInstanceUID)]


# --------------------------------------------------------------------------- C-GET

def test_getscu_study_every_instance_bytes_identical(corpus: Corpus) -> None:
    out = corpus.outdir("get")
    result = getscu(corpus.server.port, "STUDY",
                    [f"StudyInstanceUID={corpus.study('A1-CT1')}"], out)
    assert result.final_status == SUCCESS, result.output[-3000:]
    assert result.counts()["completed"] == 3
    stored = archived_by_uid(corpus.server.archive)
    received = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
                for p in out.iterdir()}
    labels = corpus.labels_of_study("A1-CT1")
    assert set(received) == {str(corpus[k].SOPInstanceUID) for k in labels}
    for uid, path in received.items():
        assert dataset_bytes(path) == dataset_bytes(stored[uid])


def test_getscu_unmatched_query_is_success_with_nothing(corpus: Corpus) -> None:
    out = corpus.outdir("get")
    result = getscu(corpus.server.port, "STUDY", ["StudyInstanceUID=1.2.3.4.5.6.7"], out)
    assert result.final_status == SUCCESS
    assert list(out.iterdir()) == []
