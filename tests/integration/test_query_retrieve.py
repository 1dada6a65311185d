"""Query/Retrieve with a pynetdicom SCU against the real server in-process.

C-CANCEL during a large C-FIND, a C-GET of a 300-instance study, C-MOVE to a pynetdicom
Storage SCP (all delivered, partial failure, all failed, unknown and unreachable
destinations), C-GET sub-operation failures, and the query settings (max_results,
case_sensitive_names) and combined date-time matching seen through the DIMSE status.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import generate_uid
from pynetdicom import build_role, evt
from pynetdicom.pdu_primitives import SOPClassExtendedNegotiation
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelMove,
)

from pacs_server.config import Config
from support.archive import archived_by_uid
from support.config import FAST_STORAGE, peer, server_config
from support.instances import (
    CT_IMAGE,
    MR_IMAGE,
    SECONDARY_CAPTURE,
    bundled_dataset,
    dataset_bytes,
    new_dataset,
)
from support.polling import free_port
from support.scp import StorageScp
from support.scu import (
    CANCEL,
    FIND_S,
    GET_S,
    NATIVE,
    PENDING,
    SUCCESS,
    GetScu,
    Response,
    Scu,
    finals_cancelling,
    identifier,
)
from support.server import RunningServer

FIND_P = PatientRootQueryRetrieveInformationModelFind
MOVE_P = PatientRootQueryRetrieveInformationModelMove
BIG_STUDIES = 5
BIG_PER_STUDY = 300
SCU = Scu()


def matches_of(rsps: list[Response]) -> list[Dataset]:
    assert [r.status for r in rsps] == [PENDING] * (len(rsps) - 1) + [SUCCESS]
    return [r.identifier for r in rsps[:-1] if r.identifier is not None]


def statuses(port: int, datasets: list[Dataset]) -> list[int]:
    """C-STORE the datasets over one association; the statuses."""
    return [r.status for r in SCU.store_datasets(port, datasets)]


def small_instance(**attrs: Any) -> Dataset:
    """A minimal valid Secondary Capture instance built in memory."""
    return new_dataset(sop_class=SECONDARY_CAPTURE, modality="OT", **attrs)


# --------------------------------------------------------------------------- big archive

@dataclass
class Big:
    server: RunningServer
    studies: list[str]
    sent: dict[str, Dataset]          # SOP Instance UID → dataset as sent


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Big]:
    """1500 instances of one patient in 5 studies of 300, stored over 4 associations."""
    root = tmp_path_factory.mktemp("qr-big")
    srv = RunningServer(server_config(root, FAST_STORAGE)).start()
    try:
        studies = [generate_uid() for _ in range(BIG_STUDIES)]
        series = [generate_uid() for _ in range(BIG_STUDIES)]
        datasets = [small_instance(PatientID="BIG", PatientName="Big^Archive",
                                   StudyInstanceUID=studies[i % BIG_STUDIES],
                                   SeriesInstanceUID=series[i % BIG_STUDIES],
                                   InstanceNumber=i // BIG_STUDIES + 1)
                    for i in range(BIG_STUDIES * BIG_PER_STUDY)]
        with ThreadPoolExecutor(4) as pool:
            parts = list(pool.map(lambda k: statuses(srv.port, datasets[k::4]), range(4)))
        assert [s for part in parts for s in part] == [SUCCESS] * len(datasets)
        yield Big(srv, studies, {str(ds.SOPInstanceUID): ds for ds in datasets})
    finally:
        srv.stop()


def test_big_archive_counts(big: Big) -> None:
    found = matches_of(SCU.find(big.server.port, identifier(
        "STUDY", PatientID="BIG", StudyInstanceUID="", NumberOfStudyRelatedInstances="")))
    assert {str(r.StudyInstanceUID): int(r.NumberOfStudyRelatedInstances)
            for r in found} == {uid: BIG_PER_STUDY for uid in big.studies}


def test_c_cancel_stops_a_large_image_level_find(big: Big) -> None:
    with SCU.associate(big.server.port, [(FIND_S, NATIVE)]) as assoc:
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
        assert big.server.sample(
            "pacs_dimse_requests_total", service="C-FIND", status="0xFE00") == 1
        assert all(str(r.SOPInstanceUID) in big.sent for r in pending)
        # The association (and the server's cursor) is fine afterwards.
        after = [(int(st.Status), ident) for st, ident in assoc.send_c_find(
            identifier("STUDY", StudyInstanceUID=big.studies[0],
                       NumberOfStudyRelatedInstances=""), FIND_S, msg_id=8)]
        assert [s for s, _ in after] == [PENDING, SUCCESS]
        assert int(after[0][1].NumberOfStudyRelatedInstances) == BIG_PER_STUDY
    # A fresh query still sees every instance of one study.
    found = matches_of(SCU.find(big.server.port, identifier(
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
    assert big.server.sample("pacs_retrieve_instances_total", service="C-GET") == BIG_PER_STUDY
    files = archived_by_uid(big.server.archive)
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
    srv = RunningServer(server_config(root, {**FAST_STORAGE, "peers": [
        peer("FAILCT", failing.port), peer("ALLOK", accepting.port),
        peer("MRONLY", mr_only.port), peer("DEAD", free_port())]})).start()
    try:
        mixed, ct_only = generate_uid(), generate_uid()
        ct_series = generate_uid()
        items = {
            "CT1": bundled_dataset("CT_small.dcm", StudyInstanceUID=mixed,
                                   SeriesInstanceUID=ct_series, PatientID="PID-M",
                                   InstanceNumber=1, StudyDate="20230115", StudyTime="230000"),
            "CT2": bundled_dataset("CT_small.dcm", StudyInstanceUID=mixed,
                                   SeriesInstanceUID=ct_series, PatientID="PID-M",
                                   InstanceNumber=2, StudyDate="20230115", StudyTime="230000"),
            "MR": bundled_dataset("MR_small.dcm", StudyInstanceUID=mixed, PatientID="PID-M",
                                  StudyDate="20230115", StudyTime="230000"),
            "CT3": bundled_dataset("CT_small.dcm", StudyInstanceUID=ct_only, PatientID="PID-N",
                                   StudyDate="20230116", StudyTime="050000"),
            "CT4": bundled_dataset("CT_small.dcm", PatientID="PID-O",
                                   StudyDate="20230115", StudyTime="050000"),
            "CT5": bundled_dataset("CT_small.dcm", PatientID="PID-O",
                                   StudyDate="20230116", StudyTime="230000"),
        }
        assert statuses(srv.port, list(items.values())) == [SUCCESS] * len(items)
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
        scp.clear()
    return small


def uid(ds: Dataset) -> str:
    return str(ds.SOPInstanceUID)


def uid_list(ds: Dataset) -> list[str]:
    """Failed SOP Instance UID List as a list, whatever its multiplicity."""
    value = ds.FailedSOPInstanceUIDList
    return [str(v) for v in value] if isinstance(value, (list, MultiValue)) else [str(value)]


def assert_only_mr_delivered(final: Response, items: dict[str, Dataset]) -> None:
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
    rsps = SCU.move(srv.port, identifier("STUDY", StudyInstanceUID=archive["mixed"]), "ALLOK")
    # One to three pending responses (at most one per pending.PENDING_INTERVAL_S).
    assert [r.status for r in rsps] == [PENDING] * (len(rsps) - 1) + [SUCCESS]
    assert 2 <= len(rsps) <= 4
    assert int(rsps[-1].status_ds.NumberOfCompletedSuboperations) == 3
    assert set(scp.received) == {uid(items[k]) for k in ("CT1", "CT2", "MR")}
    for key in ("CT1", "CT2", "MR"):
        got, sent = scp.received[uid(items[key])], items[key]
        assert [e.tag for e in got] == [e.tag for e in sent]
        for elem in sent:
            assert got[elem.tag].value == elem.value, (key, elem.tag)


def test_c_move_patient_root_at_patient_level(archive: dict[str, Any]) -> None:
    srv, items, scp = archive["server"], archive["items"], archive["accepting"]
    rsps = SCU.move(srv.port, identifier("PATIENT", PatientID="PID-N"), "ALLOK", model=MOVE_P)
    assert rsps[-1].status == SUCCESS
    assert set(scp.received) == {uid(items["CT3"])}


def test_c_move_partial_failure_lists_the_failed_instances(archive: dict[str, Any]) -> None:
    srv, items, scp = archive["server"], archive["items"], archive["failing"]
    rsps = SCU.move(srv.port, identifier("STUDY", StudyInstanceUID=archive["mixed"]), "FAILCT")
    assert_only_mr_delivered(rsps[-1], items)
    assert set(scp.received) == {uid(items["MR"])}


def test_c_move_partial_failure_when_the_destination_refuses_a_sop_class(
        archive: dict[str, Any]) -> None:
    """The destination does not accept CT in association negotiation at all."""
    srv, items, scp = archive["server"], archive["items"], archive["mr_only"]
    rsps = SCU.move(srv.port, identifier("STUDY", StudyInstanceUID=archive["mixed"]), "MRONLY")
    assert_only_mr_delivered(rsps[-1], items)
    assert set(scp.received) == {uid(items["MR"])}


def test_c_move_all_failed(archive: dict[str, Any]) -> None:
    srv, items = archive["server"], archive["items"]
    rsps = SCU.move(srv.port, identifier("STUDY", StudyInstanceUID=archive["ct_only"]),
                  "FAILCT")
    final = rsps[-1]
    assert final.status == 0xA702
    assert int(final.status_ds.NumberOfFailedSuboperations) == 1
    assert final.identifier is not None
    assert uid_list(final.identifier) == [uid(items["CT3"])]


def test_c_move_unknown_destination(archive: dict[str, Any]) -> None:
    rsps = SCU.move(archive["server"].port,
                  identifier("STUDY", StudyInstanceUID=archive["mixed"]), "NOBODY")
    assert [r.status for r in rsps] == [0xA801]


def test_c_move_unreachable_destination_fails_promptly(archive: dict[str, Any]) -> None:
    started = time.monotonic()
    rsps = SCU.move(archive["server"].port,
                  identifier("STUDY", StudyInstanceUID=archive["mixed"]), "DEAD")
    assert time.monotonic() - started < 15
    assert [r.status for r in rsps] == [0xA801]


def test_c_move_without_any_key_is_refused(archive: dict[str, Any]) -> None:
    rsps = SCU.move(archive["server"].port, identifier("STUDY", StudyInstanceUID=""), "ALLOK")
    assert rsps[-1].status == 0xA900
    assert archive["accepting"].received == {}


def test_c_move_of_nothing_is_success(archive: dict[str, Any]) -> None:
    rsps = SCU.move(archive["server"].port, identifier("STUDY", StudyInstanceUID="1.2.3.4"),
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


def test_c_get_pending_responses_count_every_sub_operation(archive: dict[str, Any]) -> None:
    """One pending response per sub-operation, in order, counts as PS3.4 C.4.3.1.3 asks
    (two of three fail before anything is sent: their pending responses still go out
    before the next sub-operation's C-STORE-RQ, dicom/retrieve_scp.py)."""
    rsps = GetScu(MR_IMAGE).get(archive["server"].port,
                                identifier("STUDY", StudyInstanceUID=archive["mixed"]))
    assert [r.status for r in rsps] == [PENDING, PENDING, PENDING, 0xB000]
    counts = [tuple(int(getattr(r.status_ds, k)) for k in (
        "NumberOfRemainingSuboperations", "NumberOfCompletedSuboperations",
        "NumberOfFailedSuboperations", "NumberOfWarningSuboperations")) for r in rsps[:3]]
    assert [c[0] for c in counts] == [2, 1, 0]
    assert [c[1] + c[2] for c in counts] == [1, 2, 3] and all(c[3] == 0 for c in counts)
    assert counts[-1][1:] == (1, 2, 0)


def test_c_cancel_stops_a_c_get(big: Big) -> None:
    """C-CANCEL between sub-operations: 0xFE00 with the counts so far (PS3.4 C.4.3.2)."""
    received: list[str] = []

    def on_store(event: Any) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return SUCCESS

    contexts = [(GET_S, NATIVE), (SECONDARY_CAPTURE, NATIVE)]
    with SCU.associate(big.server.port, contexts,
                       ext_neg=[build_role(SECONDARY_CAPTURE, scp_role=True)],
                       evt_handlers=[(evt.EVT_C_STORE, on_store)]) as assoc:
        finals = finals_cancelling(assoc.send_c_get(
            identifier("STUDY", StudyInstanceUID=big.studies[1]), GET_S, msg_id=9),
            5, lambda: assoc.send_c_cancel(9, query_model=GET_S))
        assert [int(f.Status) for f in finals] == [CANCEL]
        final = finals[0]
        done = int(final.NumberOfCompletedSuboperations)
        assert 5 <= done < BIG_PER_STUDY and int(final.NumberOfFailedSuboperations) == 0
        assert int(final.NumberOfRemainingSuboperations) == BIG_PER_STUDY - done
        assert len(received) == done and set(received) <= set(big.sent)
        # The association goes on: a C-ECHO after the cancelled C-GET.
        assert int(assoc.send_c_echo().Status) == SUCCESS


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
    patients = matches_of(SCU.find(srv.port, identifier(
        "PATIENT", PatientID="PID-M", PatientName="", NumberOfPatientRelatedInstances=""),
        FIND_P))
    assert [(p.PatientID, str(p.PatientName), int(p.NumberOfPatientRelatedInstances))
            for p in patients] == [("PID-M", str(items["CT1"].PatientName), 3)]
    study = matches_of(SCU.find(srv.port, identifier(
        "STUDY", PatientID="PID-M", StudyInstanceUID="", ModalitiesInStudy="")))
    assert [(s.StudyInstanceUID, list(s.ModalitiesInStudy)) for s in study] == [
        (archive["mixed"], ["CT", "MR"])]
    series = matches_of(SCU.find(srv.port, identifier(
        "SERIES", StudyInstanceUID=archive["mixed"], Modality="CT", SeriesInstanceUID="",
        NumberOfSeriesRelatedInstances="")))
    assert [(s.SeriesInstanceUID, int(s.NumberOfSeriesRelatedInstances)) for s in series] == [
        (items["CT1"].SeriesInstanceUID, 2)]
    images = matches_of(SCU.find(srv.port, identifier(
        "IMAGE", SeriesInstanceUID=items["CT1"].SeriesInstanceUID, SOPInstanceUID="",
        InstanceNumber="")))
    assert sorted((str(i.SOPInstanceUID), int(i.InstanceNumber)) for i in images) == sorted(
        (uid(items[k]), int(items[k].InstanceNumber)) for k in ("CT1", "CT2"))


async def test_c_find_max_results(start_server: Callable[..., Any],
                                  make_cfg: Callable[..., Config]) -> None:
    srv = await start_server(make_cfg({"query.max_results": 3}))
    sent = [small_instance(PatientID="CAP", InstanceNumber=i) for i in range(5)]
    assert await asyncio.to_thread(statuses, srv.port, sent) == [SUCCESS] * 5
    rsps = await asyncio.to_thread(SCU.find, srv.port, identifier(
        "STUDY", PatientID="CAP", StudyInstanceUID=""))
    assert [r.status for r in rsps] == [PENDING] * 3 + [0xA700]
    assert {str(r.identifier.StudyInstanceUID) for r in rsps[:3] if r.identifier} <= {
        str(ds.StudyInstanceUID) for ds in sent}
    assert "ErrorComment" in rsps[-1].status_ds


async def test_c_find_case_sensitive_names(start_server: Callable[..., Any],
                                           make_cfg: Callable[..., Config],
                                           tmp_path: Path) -> None:
    servers = {sensitive: await start_server(make_cfg(
        {"query.case_sensitive_names": sensitive}, root=tmp_path / f"cs-{sensitive}"))
               for sensitive in (False, True)}
    sent = small_instance(PatientID="P-DOE", PatientName="Doe^John")
    for srv in servers.values():
        assert await asyncio.to_thread(statuses, srv.port, [sent]) == [SUCCESS]
    for sensitive, query, found in [
            (False, "DOE^JOHN", True), (False, "doe*", True), (False, "Doe^John", True),
            (False, "d?e^j*", True), (True, "DOE^JOHN", False), (True, "doe*", False),
            (True, "Doe^John", True), (True, "Do?^J*", True), (True, "d?e^j*", False)]:
        got = matches_of(await asyncio.to_thread(SCU.find, servers[sensitive].port, identifier(
            "PATIENT", PatientName=query, PatientID=""), FIND_P))
        assert [g.PatientID for g in got] == (["P-DOE"] if found else []), (sensitive, query)


def test_combined_date_time_matching_when_negotiated(archive: dict[str, Any]) -> None:
    """PS3.4 C.2.2.2.5.1: 20230115-20230116 with 2200-0600 is one span of time."""
    srv, items = archive["server"], archive["items"]
    query = identifier("STUDY", StudyDate="20230115-20230116", StudyTime="2200-0600",
                       StudyInstanceUID="")
    plain = matches_of(SCU.find(srv.port, query))
    assert plain == []                      # two independent ranges: 22:00 > 06:00
    ext = SOPClassExtendedNegotiation()
    ext.sop_class_uid = FIND_S
    ext.service_class_application_information = b"\x01\x01"
    combined = matches_of(SCU.find(srv.port, query, ext_neg=[ext]))
    # 2023-01-15 23:00 and 2023-01-16 05:00 are inside; 01-15 05:00, 01-16 23:00 are not
    assert {str(r.StudyInstanceUID) for r in combined} == {archive["mixed"],
                                                           archive["ct_only"]}
    assert {str(items[k].StudyInstanceUID) for k in ("CT4", "CT5")}.isdisjoint(
        str(r.StudyInstanceUID) for r in combined)
    wide = matches_of(SCU.find(srv.port, identifier(
        "STUDY", StudyDate="20230115-20230116", StudyTime="0000-2359", StudyInstanceUID=""),
        ext_neg=[ext]))
    assert len(wide) == 4


# --------------------------------------------------------------------------- PostgreSQL

async def test_the_server_on_postgresql(start_server: Callable[..., Any],
                                        make_cfg: Callable[..., Config],
                                        postgres_cluster: Any, postgres_url: str) -> None:
    """The whole path with the index in PostgreSQL (`database.url`): C-STORE with the
    duplicate check, C-FIND with a case-insensitive wildcard and the trigger-kept counts,
    C-GET, and a database restart under a running server."""
    srv = await start_server(make_cfg({"database.url": postgres_url}))
    await asyncio.to_thread(postgres_round_trip, srv, postgres_cluster)


def postgres_round_trip(srv: RunningServer, postgres_cluster: Any) -> None:
    study_a, study_b = generate_uid(), generate_uid()
    series_a = generate_uid()
    sent = ([small_instance(PatientID="PG1", PatientName="Smith^Anna", StudyInstanceUID=study_a,
                            SeriesInstanceUID=series_a, InstanceNumber=i) for i in range(3)]
            + [small_instance(PatientID="PG2", PatientName="Jones^Bob",
                              StudyInstanceUID=study_b, InstanceNumber=1)])
    assert statuses(srv.port, sent) == [SUCCESS] * 4
    assert statuses(srv.port, [sent[0]]) == [0x0111]       # duplicate refused

    studies = matches_of(SCU.find(srv.port, identifier(
        "STUDY", PatientName="smi*", StudyInstanceUID="", NumberOfStudyRelatedInstances="",
        NumberOfStudyRelatedSeries="", ModalitiesInStudy="")))
    assert [(s.StudyInstanceUID, int(s.NumberOfStudyRelatedInstances),
             int(s.NumberOfStudyRelatedSeries), s.ModalitiesInStudy) for s in studies] == [
        (study_a, 3, 1, "OT")]
    images = matches_of(SCU.find(srv.port, identifier(
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
    assert statuses(srv.port, [late]) == [SUCCESS]
    # what the index holds now, level by level
    patients = matches_of(SCU.find(srv.port, identifier("PATIENT", PatientID=""), FIND_P))
    all_studies = matches_of(SCU.find(srv.port, identifier(
        "STUDY", StudyInstanceUID="", NumberOfStudyRelatedInstances="")))
    instances = matches_of(SCU.find(srv.port, identifier("IMAGE", SOPInstanceUID="")))
    assert (len(patients), len(all_studies), len(instances)) == (2, 2, 5)
    assert {str(s.StudyInstanceUID): int(s.NumberOfStudyRelatedInstances)
            for s in all_studies} == {study_a: 4, study_b: 1}
