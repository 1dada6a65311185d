"""Query/Retrieve with a pynetdicom SCU against the real server in-process.

C-CANCEL during a large C-FIND, a C-GET of a 300-instance study, C-MOVE to a pynetdicom
Storage SCP (all delivered, partial failure, all failed, unknown and unreachable
destinations), C-GET sub-operation failures, and the query settings (max_results,
case_sensitive_names) and combined date-time matching seen through the DIMSE status.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pacs_testing import CT_IMAGE, MR_IMAGE, SECONDARY_CAPTURE, dataset_bytes, pick_free_port
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import evt
from pynetdicom.pdu_primitives import SOPClassExtendedNegotiation
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from qr_helpers import (
    QrServer,
    StorageScp,
    associate,
    from_template,
    get_role_ae,
    qr_config,
    scu_ae,
    server_warnings,
    store_datasets,
)

SUCCESS, PENDING, CANCEL = 0x0000, 0xFF00, 0xFE00
FIND_S = StudyRootQueryRetrieveInformationModelFind
FIND_P = PatientRootQueryRetrieveInformationModelFind
GET_S = StudyRootQueryRetrieveInformationModelGet
MOVE_S = StudyRootQueryRetrieveInformationModelMove
MOVE_P = PatientRootQueryRetrieveInformationModelMove
BIG_STUDIES = 5
BIG_PER_STUDY = 300


@pytest.fixture(autouse=True)
def _server_warnings() -> Iterator[None]:
    with server_warnings():
        yield


def identifier(level: str, **keys: Any) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


@dataclass
class Rsp:
    status: int
    identifier: Dataset | None
    status_ds: Dataset


def c_find(port: int, query: Dataset, model: Any = FIND_S,
           ext_neg: list[Any] | None = None) -> list[Rsp]:
    ae = scu_ae(model)
    assoc = associate(ae, port, ext_neg=ext_neg or [])
    assert assoc.is_established
    try:
        return [Rsp(int(st.Status), ident, st) for st, ident in assoc.send_c_find(query, model)]
    finally:
        assoc.release()


def matches_of(rsps: list[Rsp]) -> list[Dataset]:
    assert [r.status for r in rsps] == [PENDING] * (len(rsps) - 1) + [SUCCESS]
    return [r.identifier for r in rsps[:-1] if r.identifier is not None]


def c_move(port: int, query: Dataset, dest: str, model: Any = MOVE_S) -> list[Rsp]:
    ae = scu_ae(model)
    assoc = associate(ae, port)
    assert assoc.is_established
    try:
        return [Rsp(int(st.Status), ident, st)
                for st, ident in assoc.send_c_move(query, dest, model)]
    finally:
        assoc.release()


class GetScu:
    """C-GET with the Storage SCP role for `classes`; keeps what arrives, raw and decoded."""

    def __init__(self, *classes: str) -> None:
        self.received: dict[str, Dataset] = {}
        self.raw: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self.ae, self.roles = get_role_ae(*classes, query_models=[GET_S])

    def _on_store(self, event: Any) -> int:
        ds = event.dataset
        # dicom/server.py turns on pynetdicom's process-wide STORE_RECV_CHUNKED_DATASET,
        # so in this process what arrived is in a file (deleted when we return).
        path = getattr(event.request, "_dataset_path", None)
        raw = dataset_bytes(Path(path)) if path else event.encoded_dataset(include_meta=False)
        with self._lock:
            self.received[str(ds.SOPInstanceUID)] = ds
            self.raw[str(ds.SOPInstanceUID)] = raw
        return SUCCESS

    def get(self, port: int, query: Dataset) -> list[Rsp]:
        assoc = associate(self.ae, port, ext_neg=self.roles,
                          evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        assert assoc.is_established
        try:
            return [Rsp(int(st.Status), ident, st) for st, ident in assoc.send_c_get(query, GET_S)]
        finally:
            assoc.release()


def small_instance(*, sop_class: str = SECONDARY_CAPTURE, modality: str = "OT",
                   **attrs: Any) -> Dataset:
    """A minimal valid instance (8-bit, 16 pixels) built in memory."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.Rows, ds.Columns = 4, 4
    ds.PixelData = bytes(range(16))
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def archive_files(srv: QrServer) -> dict[str, Path]:
    """SOP Instance UID → archived file (file names are `<SOP Instance UID>.dcm`)."""
    return {p.stem: p for p in srv.archive.rglob("*.dcm") if ".incoming" not in p.parts}


# --------------------------------------------------------------------------- big archive

@dataclass
class Big:
    server: QrServer
    studies: list[str]
    sent: dict[str, Dataset]          # SOP Instance UID → dataset as sent


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Big]:
    """1500 instances of one patient in 5 studies of 300, stored over 4 associations."""
    root = tmp_path_factory.mktemp("qr-big")
    with server_warnings():
        srv = QrServer(qr_config(root)).start()
        try:
            studies = [generate_uid() for _ in range(BIG_STUDIES)]
            series = [generate_uid() for _ in range(BIG_STUDIES)]
            datasets = [small_instance(PatientID="BIG", PatientName="Big^Archive",
                                       StudyInstanceUID=studies[i % BIG_STUDIES],
                                       SeriesInstanceUID=series[i % BIG_STUDIES],
                                       InstanceNumber=i // BIG_STUDIES + 1)
                        for i in range(BIG_STUDIES * BIG_PER_STUDY)]
            with ThreadPoolExecutor(4) as pool:
                statuses = list(pool.map(lambda k: store_datasets(srv.port, datasets[k::4]),
                                         range(4)))
            assert [s for part in statuses for s in part] == [SUCCESS] * len(datasets)
            yield Big(srv, studies, {str(ds.SOPInstanceUID): ds for ds in datasets})
        finally:
            srv.stop()


def test_big_archive_counts(big: Big) -> None:
    found = matches_of(c_find(big.server.port, identifier(
        "STUDY", PatientID="BIG", StudyInstanceUID="", NumberOfStudyRelatedInstances="")))
    assert {str(r.StudyInstanceUID): int(r.NumberOfStudyRelatedInstances)
            for r in found} == {uid: BIG_PER_STUDY for uid in big.studies}


def test_c_cancel_stops_a_large_image_level_find(big: Big) -> None:
    ae = scu_ae(FIND_S)
    assoc = associate(ae, big.server.port)
    assert assoc.is_established
    try:
        query = identifier("IMAGE", PatientID="BIG", SOPInstanceUID="", InstanceNumber="")
        pending: list[Dataset] = []
        finals: list[int] = []
        for status, ident in assoc.send_c_find(query, FIND_S, msg_id=7):
            if status.Status == PENDING:
                pending.append(ident)
                if len(pending) == 5:
                    assoc.send_c_cancel(7, query_model=FIND_S)
            else:
                finals.append(int(status.Status))
        assert finals == [CANCEL]
        assert 5 <= len(pending) < len(big.sent) // 3, len(pending)
        registry = big.server.app.metrics.registry
        assert registry.get_sample_value(
            "pacs_dimse_requests_total", {"service": "C-FIND", "status": "0xFE00"}) == 1
        assert all(str(r.SOPInstanceUID) in big.sent for r in pending)
        # The association (and the server's cursor) is fine afterwards.
        after = [(int(st.Status), ident) for st, ident in assoc.send_c_find(
            identifier("STUDY", StudyInstanceUID=big.studies[0],
                       NumberOfStudyRelatedInstances=""), FIND_S, msg_id=8)]
        assert [s for s, _ in after] == [PENDING, SUCCESS]
        assert int(after[0][1].NumberOfStudyRelatedInstances) == BIG_PER_STUDY
    finally:
        assoc.release()
    # A fresh query still sees every instance of one study.
    found = matches_of(c_find(big.server.port, identifier(
        "SERIES", StudyInstanceUID=big.studies[0], NumberOfSeriesRelatedInstances="")))
    assert [int(r.NumberOfSeriesRelatedInstances) for r in found] == [BIG_PER_STUDY]


def test_c_get_of_a_300_instance_study_delivers_every_instance(big: Big) -> None:
    study = big.studies[2]
    scu = GetScu(SECONDARY_CAPTURE)
    rsps = scu.get(big.server.port, identifier("STUDY", StudyInstanceUID=study))
    final = rsps[-1]
    assert final.status == SUCCESS
    assert int(final.status_ds.NumberOfCompletedSuboperations) == BIG_PER_STUDY
    assert int(final.status_ds.NumberOfFailedSuboperations) == 0
    assert all(r.status == PENDING for r in rsps[:-1])
    expected = {uid for uid, ds in big.sent.items() if ds.StudyInstanceUID == study}
    assert len(expected) == BIG_PER_STUDY
    assert set(scu.received) == expected
    assert big.server.app.metrics.registry.get_sample_value(
        "pacs_retrieve_instances_total", {"service": "C-GET"}) == BIG_PER_STUDY
    files = archive_files(big.server)
    for uid, ds in scu.received.items():
        sent = big.sent[uid]
        assert ds.InstanceNumber == sent.InstanceNumber
        assert ds.PixelData == sent.PixelData
        assert scu.raw[uid] == dataset_bytes(files[uid])     # the archived bytes, unchanged


# --------------------------------------------------------------------------- small archive

@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A server whose peers are a pynetdicom SCP that fails CT, one that accepts all,
    and a port nobody listens on; holding one study with 2 CT + 1 MR and one CT-only."""
    root = tmp_path_factory.mktemp("qr-small")
    failing = StorageScp("FAILCT", fail_classes=[CT_IMAGE])
    accepting = StorageScp("ALLOK")
    mr_only = StorageScp("MRONLY", sop_classes=[MR_IMAGE])     # CT is not negotiated
    with server_warnings():
        srv = QrServer(qr_config(root, peers=[
            {"ae_title": "FAILCT", "host": "127.0.0.1", "port": failing.port},
            {"ae_title": "ALLOK", "host": "127.0.0.1", "port": accepting.port},
            {"ae_title": "MRONLY", "host": "127.0.0.1", "port": mr_only.port},
            {"ae_title": "DEAD", "host": "127.0.0.1", "port": pick_free_port()},
        ])).start()
        try:
            mixed, ct_only = generate_uid(), generate_uid()
            ct_series = generate_uid()
            items = {
                "CT1": from_template("CT_small.dcm", study=mixed, series=ct_series,
                                     PatientID="PID-M", InstanceNumber=1,
                                     StudyDate="20230115", StudyTime="230000"),
                "CT2": from_template("CT_small.dcm", study=mixed, series=ct_series,
                                     PatientID="PID-M", InstanceNumber=2,
                                     StudyDate="20230115", StudyTime="230000"),
                "MR": from_template("MR_small.dcm", study=mixed, PatientID="PID-M",
                                    StudyDate="20230115", StudyTime="230000"),
                "CT3": from_template("CT_small.dcm", study=ct_only, PatientID="PID-N",
                                     StudyDate="20230116", StudyTime="050000"),
                "CT4": from_template("CT_small.dcm", PatientID="PID-O",
                                     StudyDate="20230115", StudyTime="050000"),
                "CT5": from_template("CT_small.dcm", PatientID="PID-O",
                                     StudyDate="20230116", StudyTime="230000"),
            }
            assert store_datasets(srv.port, list(items.values())) == [SUCCESS] * len(items)
            yield {"server": srv, "items": items, "mixed": mixed, "ct_only": ct_only,
                   "failing": failing, "accepting": accepting, "mr_only": mr_only}
        finally:
            srv.stop()
            for scp in (failing, accepting, mr_only):
                scp.stop()


@pytest.fixture
def archive(small: dict[str, Any]) -> dict[str, Any]:
    """The module's small archive, with the destinations' memories cleared."""
    for scp in (small["failing"], small["accepting"], small["mr_only"]):
        scp.received.clear()
        scp.failed.clear()
    return small


def uid(ds: Dataset) -> str:
    return str(ds.SOPInstanceUID)


def uid_list(ds: Dataset) -> list[str]:
    """Failed SOP Instance UID List as a list, whatever its multiplicity."""
    value = ds.FailedSOPInstanceUIDList
    return [str(v) for v in value] if isinstance(value, (list, MultiValue)) else [str(value)]


def assert_only_mr_delivered(final: Rsp, items: dict[str, Dataset]) -> None:
    """The final response of a retrieve of the mixed study where only MR got through:
    0xB000, 1 completed, 2 failed, and the two CT instances listed as failed."""
    assert final.status == 0xB000
    assert int(final.status_ds.NumberOfCompletedSuboperations) == 1
    assert int(final.status_ds.NumberOfFailedSuboperations) == 2
    assert final.identifier is not None
    assert sorted(uid_list(final.identifier)) == sorted([uid(items["CT1"]),
                                                         uid(items["CT2"])])


def test_c_move_delivers_every_instance(archive: dict[str, Any]) -> None:
    srv, items, scp = archive["server"], archive["items"], archive["accepting"]
    rsps = c_move(srv.port, identifier("STUDY", StudyInstanceUID=archive["mixed"]), "ALLOK")
    assert [r.status for r in rsps] == [PENDING, PENDING, PENDING, SUCCESS]
    assert int(rsps[-1].status_ds.NumberOfCompletedSuboperations) == 3
    assert set(scp.received) == {uid(items[k]) for k in ("CT1", "CT2", "MR")}
    for key in ("CT1", "CT2", "MR"):
        got, sent = scp.received[uid(items[key])], items[key]
        assert [e.tag for e in got] == [e.tag for e in sent]
        for elem in sent:
            assert got[elem.tag].value == elem.value, (key, elem.tag)


def test_c_move_patient_root_at_patient_level(archive: dict[str, Any]) -> None:
    srv, items, scp = archive["server"], archive["items"], archive["accepting"]
    rsps = c_move(srv.port, identifier("PATIENT", PatientID="PID-N"), "ALLOK", model=MOVE_P)
    assert rsps[-1].status == SUCCESS
    assert set(scp.received) == {uid(items["CT3"])}


def test_c_move_partial_failure_lists_the_failed_instances(archive: dict[str, Any]) -> None:
    srv, items, scp = archive["server"], archive["items"], archive["failing"]
    rsps = c_move(srv.port, identifier("STUDY", StudyInstanceUID=archive["mixed"]), "FAILCT")
    assert_only_mr_delivered(rsps[-1], items)
    assert set(scp.received) == {uid(items["MR"])}


def test_c_move_partial_failure_when_the_destination_refuses_a_sop_class(
        archive: dict[str, Any]) -> None:
    """The destination does not accept CT in association negotiation at all."""
    srv, items, scp = archive["server"], archive["items"], archive["mr_only"]
    rsps = c_move(srv.port, identifier("STUDY", StudyInstanceUID=archive["mixed"]), "MRONLY")
    assert_only_mr_delivered(rsps[-1], items)
    assert set(scp.received) == {uid(items["MR"])}


def test_c_move_all_failed(archive: dict[str, Any]) -> None:
    srv, items = archive["server"], archive["items"]
    rsps = c_move(srv.port, identifier("STUDY", StudyInstanceUID=archive["ct_only"]),
                  "FAILCT")
    final = rsps[-1]
    assert final.status == 0xA702
    assert int(final.status_ds.NumberOfFailedSuboperations) == 1
    assert final.identifier is not None
    assert uid_list(final.identifier) == [uid(items["CT3"])]


def test_c_move_unknown_destination(archive: dict[str, Any]) -> None:
    rsps = c_move(archive["server"].port,
                  identifier("STUDY", StudyInstanceUID=archive["mixed"]), "NOBODY")
    assert [r.status for r in rsps] == [0xA801]


def test_c_move_unreachable_destination_fails_promptly(archive: dict[str, Any]) -> None:
    started = time.monotonic()
    rsps = c_move(archive["server"].port,
                  identifier("STUDY", StudyInstanceUID=archive["mixed"]), "DEAD")
    assert time.monotonic() - started < 15
    assert [r.status for r in rsps] == [0xA801]


def test_c_move_without_any_key_is_refused(archive: dict[str, Any]) -> None:
    rsps = c_move(archive["server"].port, identifier("STUDY", StudyInstanceUID=""), "ALLOK")
    assert rsps[-1].status == 0xA900
    assert archive["accepting"].received == {}


def test_c_move_of_nothing_is_success(archive: dict[str, Any]) -> None:
    rsps = c_move(archive["server"].port, identifier("STUDY", StudyInstanceUID="1.2.3.4"),
                  "ALLOK")
    assert [r.status for r in rsps] == [SUCCESS]
    assert int(rsps[-1].status_ds.NumberOfCompletedSuboperations) == 0


def test_c_get_partial_failure_when_the_scu_takes_only_mr(archive: dict[str, Any]) -> None:
    items = archive["items"]
    scu = GetScu(MR_IMAGE)
    rsps = scu.get(archive["server"].port,
                   identifier("STUDY", StudyInstanceUID=archive["mixed"]))
    assert_only_mr_delivered(rsps[-1], items)
    assert set(scu.received) == {uid(items["MR"])}


def test_c_get_all_failed(archive: dict[str, Any]) -> None:
    scu = GetScu(MR_IMAGE)
    rsps = scu.get(archive["server"].port,
                   identifier("STUDY", StudyInstanceUID=archive["ct_only"]))
    assert rsps[-1].status == 0xA702
    assert scu.received == {}


def test_c_get_bad_level_is_refused(archive: dict[str, Any]) -> None:
    scu = GetScu(CT_IMAGE)
    rsps = scu.get(archive["server"].port, identifier("PATIENT", PatientID="PID-N"))
    assert rsps[-1].status == 0xA900
    assert scu.received == {}


def test_c_find_each_level_pynetdicom(archive: dict[str, Any]) -> None:
    srv, items = archive["server"], archive["items"]
    patients = matches_of(c_find(srv.port, identifier(
        "PATIENT", PatientID="PID-M", PatientName="", NumberOfPatientRelatedInstances=""),
        FIND_P))
    assert [(p.PatientID, str(p.PatientName), int(p.NumberOfPatientRelatedInstances))
            for p in patients] == [("PID-M", str(items["CT1"].PatientName), 3)]
    study = matches_of(c_find(srv.port, identifier(
        "STUDY", PatientID="PID-M", StudyInstanceUID="", ModalitiesInStudy="")))
    assert [(s.StudyInstanceUID, list(s.ModalitiesInStudy)) for s in study] == [
        (archive["mixed"], ["CT", "MR"])]
    series = matches_of(c_find(srv.port, identifier(
        "SERIES", StudyInstanceUID=archive["mixed"], Modality="CT", SeriesInstanceUID="",
        NumberOfSeriesRelatedInstances="")))
    assert [(s.SeriesInstanceUID, int(s.NumberOfSeriesRelatedInstances)) for s in series] == [
        (items["CT1"].SeriesInstanceUID, 2)]
    images = matches_of(c_find(srv.port, identifier(
        "IMAGE", SeriesInstanceUID=items["CT1"].SeriesInstanceUID, SOPInstanceUID="",
        InstanceNumber="")))
    assert sorted((str(i.SOPInstanceUID), int(i.InstanceNumber)) for i in images) == sorted(
        (uid(items[k]), int(items[k].InstanceNumber)) for k in ("CT1", "CT2"))


def test_c_find_max_results(start_qr_server: Callable[..., QrServer]) -> None:
    srv = start_qr_server(query={"max_results": 3})
    sent = [small_instance(PatientID="CAP", InstanceNumber=i) for i in range(5)]
    assert store_datasets(srv.port, sent) == [SUCCESS] * 5
    rsps = c_find(srv.port, identifier("STUDY", PatientID="CAP", StudyInstanceUID=""))
    assert [r.status for r in rsps] == [PENDING] * 3 + [0xA700]
    assert {str(r.identifier.StudyInstanceUID) for r in rsps[:3] if r.identifier} <= {
        str(ds.StudyInstanceUID) for ds in sent}
    assert "ErrorComment" in rsps[-1].status_ds


def test_c_find_case_sensitive_names(start_qr_server: Callable[..., QrServer]) -> None:
    servers = {sensitive: start_qr_server(f"cs-{sensitive}",
                                          query={"case_sensitive_names": sensitive})
               for sensitive in (False, True)}
    sent = small_instance(PatientID="P-DOE", PatientName="Doe^John")
    for srv in servers.values():
        assert store_datasets(srv.port, [sent]) == [SUCCESS]
    for sensitive, query, found in [
            (False, "DOE^JOHN", True), (False, "doe*", True), (False, "Doe^John", True),
            (False, "d?e^j*", True), (True, "DOE^JOHN", False), (True, "doe*", False),
            (True, "Doe^John", True), (True, "Do?^J*", True), (True, "d?e^j*", False)]:
        got = matches_of(c_find(servers[sensitive].port, identifier(
            "PATIENT", PatientName=query, PatientID=""), FIND_P))
        assert [g.PatientID for g in got] == (["P-DOE"] if found else []), (sensitive, query)


def test_combined_date_time_matching_when_negotiated(archive: dict[str, Any]) -> None:
    """PS3.4 C.2.2.2.5.1: 20230115-20230116 with 2200-0600 is one span of time."""
    srv, items = archive["server"], archive["items"]
    query = identifier("STUDY", StudyDate="20230115-20230116", StudyTime="2200-0600",
                       StudyInstanceUID="")
    plain = matches_of(c_find(srv.port, query))
    assert plain == []                      # two independent ranges: 22:00 > 06:00
    ext = SOPClassExtendedNegotiation()
    ext.sop_class_uid = FIND_S
    ext.service_class_application_information = b"\x01\x01"
    combined = matches_of(c_find(srv.port, query, ext_neg=[ext]))
    # 2023-01-15 23:00 and 2023-01-16 05:00 are inside; 01-15 05:00, 01-16 23:00 are not
    assert {str(r.StudyInstanceUID) for r in combined} == {archive["mixed"],
                                                           archive["ct_only"]}
    assert {str(items[k].StudyInstanceUID) for k in ("CT4", "CT5")}.isdisjoint(
        str(r.StudyInstanceUID) for r in combined)
    wide = matches_of(c_find(srv.port, identifier(
        "STUDY", StudyDate="20230115-20230116", StudyTime="0000-2359", StudyInstanceUID=""),
        ext_neg=[ext]))
    assert len(wide) == 4


# --------------------------------------------------------------------------- PostgreSQL

def test_the_server_on_postgresql(start_qr_server: Callable[..., QrServer],
                                  postgres_cluster: Any, postgres_url: str) -> None:
    """The whole path with the index in PostgreSQL (`database.url`): C-STORE with the
    duplicate check, C-FIND with a case-insensitive wildcard and the trigger-kept counts,
    C-GET, and a database restart under a running server."""
    srv = start_qr_server("pg", database={"url": postgres_url})
    study_a, study_b = generate_uid(), generate_uid()
    series_a = generate_uid()
    sent = ([small_instance(PatientID="PG1", PatientName="Smith^Anna", StudyInstanceUID=study_a,
                            SeriesInstanceUID=series_a, InstanceNumber=i) for i in range(3)]
            + [small_instance(PatientID="PG2", PatientName="Jones^Bob",
                              StudyInstanceUID=study_b, InstanceNumber=1)])
    assert store_datasets(srv.port, sent) == [SUCCESS] * 4
    assert store_datasets(srv.port, [sent[0]]) == [0x0111]       # duplicate refused

    studies = matches_of(c_find(srv.port, identifier(
        "STUDY", PatientName="smi*", StudyInstanceUID="", NumberOfStudyRelatedInstances="",
        NumberOfStudyRelatedSeries="", ModalitiesInStudy="")))
    assert [(s.StudyInstanceUID, int(s.NumberOfStudyRelatedInstances),
             int(s.NumberOfStudyRelatedSeries), s.ModalitiesInStudy) for s in studies] == [
        (study_a, 3, 1, "OT")]
    images = matches_of(c_find(srv.port, identifier(
        "IMAGE", StudyInstanceUID=study_a, SeriesInstanceUID=series_a, SOPInstanceUID="")))
    assert sorted(i.SOPInstanceUID for i in images) == sorted(ds.SOPInstanceUID
                                                              for ds in sent[:3])

    scu = GetScu(SECONDARY_CAPTURE)
    rsps = scu.get(srv.port, identifier("STUDY", StudyInstanceUID=study_a))
    assert rsps[-1].status == SUCCESS
    assert set(scu.received) == {ds.SOPInstanceUID for ds in sent[:3]}

    # A restart cuts the index writer's connection; the next C-STORE must still succeed.
    postgres_cluster.restart()
    late = small_instance(PatientID="PG1", StudyInstanceUID=study_a, SeriesInstanceUID=series_a)
    assert store_datasets(srv.port, [late]) == [SUCCESS]
    counts = srv.run(srv.app.repo.counts())
    assert (counts["patients"], counts["studies"], counts["instances"]) == (2, 2, 5)
