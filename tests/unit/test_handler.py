"""dicom/service.py and dicom/handler.py: registration, dispatch by SOP class, and the one
wrapper that turns exceptions into statuses, over a real association.

The services here are test services registered the way every real one is: a module-level
function returning a DicomService, handed to DicomServer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import (
    ModalityPerformedProcedureStep,
    ModalityWorklistInformationFind,
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from pacs_server.config import load_config
from pacs_server.dicom import runtime
from pacs_server.dicom.server import DicomServer
from pacs_server.dicom.service import (
    Context,
    DicomService,
    Dispatcher,
    Operation,
    Reply,
    contexts_for,
)
from pacs_server.dicom.status import PENDING, SUCCESS, Service
from pacs_server.errors import DatasetMismatch, InvalidQuery, PacsError
from pacs_server.metrics import Metrics

STUDY_FIND = str(StudyRootQueryRetrieveInformationModelFind)
PATIENT_FIND = str(PatientRootQueryRetrieveInformationModelFind)
MWL = str(ModalityWorklistInformationFind)
GET = str(StudyRootQueryRetrieveInformationModelGet)
MPPS = str(ModalityPerformedProcedureStep)


class MissingTags(DatasetMismatch):
    def __init__(self, message: str, tags: list[int]) -> None:
        super().__init__(message)
        self.attribute_tags = tags


def find_service(name: str, sop_class: str, behaviour: str) -> DicomService:
    """A C-FIND service whose handler answers according to `behaviour`."""
    def handle(event: Event) -> Iterator[tuple[Any, Any]]:
        if behaviour == "invalid":
            raise InvalidQuery("QueryRetrieveLevel is missing")
        if behaviour == "crash":
            raise RuntimeError("bug in the handler")
        ds = Dataset()
        ds.PatientID = name
        yield PENDING, ds
        if behaviour == "crash-later":
            raise RuntimeError("bug after the first match")
        yield SUCCESS, None
    return DicomService(name, contexts_for([sop_class]),
                        (Operation(evt.EVT_C_FIND, handle, Service.C_FIND, f"{name} C-FIND",
                                   frozenset({sop_class})),))


def get_service() -> DicomService:
    def handle(event: Event) -> Iterator[Any]:
        raise InvalidQuery("a retrieve needs at least one unique key")
        yield  # a generator, like every C-GET handler
    return DicomService("get", contexts_for([GET]),
                        (Operation(evt.EVT_C_GET, handle, Service.C_GET, "C-GET",
                                   frozenset({GET})),))


def mpps_service() -> DicomService:
    def create(event: Event) -> Reply:
        attrs = event.attribute_list
        if "PerformedProcedureStepStatus" not in attrs:
            raise MissingTags("PerformedProcedureStepStatus is missing", [0x00400252])
        out = Dataset()
        out.PerformedProcedureStepStatus = attrs.PerformedProcedureStepStatus
        return Reply(SUCCESS, dataset=out)
    return DicomService("mpps", (Context(MPPS),),
                        (Operation(evt.EVT_N_CREATE, create, Service.MPPS_N_CREATE,
                                   "MPPS N-CREATE", frozenset({MPPS})),))


@pytest.fixture
def dicom_server(tmp_path: Path) -> Iterator[tuple[DicomServer, Metrics]]:
    runtime.configure_libraries()
    cfg = load_config(None, {"server.port": 0, "server.host": "127.0.0.1",
                             "logging.file": "", "monitoring.metrics_port": -1})
    metrics = Metrics(CollectorRegistry())
    services = [find_service("qr", STUDY_FIND, "ok"), find_service("mwl", MWL, "invalid"),
                find_service("crashy", PATIENT_FIND, "crash-later"), get_service(),
                mpps_service()]
    server = DicomServer(cfg.server, cfg.access_control, services, metrics, str(tmp_path))
    server.start()
    try:
        yield server, metrics
    finally:
        server.stop_accepting()
        server.drain(1.0)


def associate(port: int, *contexts: str) -> Any:
    ae = AE(ae_title="TESTSCU")
    for uid in contexts:
        ae.add_requested_context(uid)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    return assoc


def find(assoc: Any, model: str) -> list[tuple[int, Dataset | None, Dataset | None]]:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = ""
    return [(int(status.Status), status, ident)
            for status, ident in assoc.send_c_find(query, model)]


def test_dispatch_by_sop_class_on_one_event(dicom_server: tuple[DicomServer, Metrics]) -> None:
    server, metrics = dicom_server
    assoc = associate(server.port, STUDY_FIND, MWL)
    try:
        qr = find(assoc, STUDY_FIND)
        mwl = find(assoc, MWL)
    finally:
        assoc.release()
    assert [(code, ident.PatientID if ident else None) for code, _, ident in qr] == [
        (PENDING, "qr"), (SUCCESS, None)]
    # The worklist operation raised InvalidQuery: the wrapper answers 0xA900 with the
    # message as Error Comment, nothing else.
    assert [code for code, _, _ in mwl] == [0xA900]
    assert mwl[0][1].ErrorComment == "QueryRetrieveLevel is missing"
    sample = metrics.registry.get_sample_value
    assert sample("pacs_dimse_requests_total", {"service": "qr C-FIND", "status": "0x0000"}) == 1
    assert sample("pacs_dimse_requests_total", {"service": "mwl C-FIND", "status": "0xA900"}) == 1
    assert sample("pacs_dimse_seconds_count", {"operation": "mwl C-FIND"}) == 1


def test_an_exception_after_results_is_the_generic_failure_and_logged_once(
        dicom_server: tuple[DicomServer, Metrics]) -> None:
    server, _ = dicom_server
    assoc = associate(server.port, PATIENT_FIND)
    with capture_logs(processors=[merge_contextvars]) as logs:
        try:
            answers = find(assoc, PATIENT_FIND)
        finally:
            assoc.release()
    assert [code for code, _, _ in answers] == [PENDING, 0xC311]
    assert answers[1][1].ErrorComment == "bug after the first match"
    errors = [e for e in logs if e["event"] == "dimse.error"]
    assert len(errors) == 1
    assert errors[0]["operation"] == "crashy C-FIND"
    assert errors[0]["status"] == "0xC311"
    assert errors[0]["calling_ae"] == "TESTSCU" and errors[0]["assoc"] >= 1
    assert "exc_info" in errors[0]


def test_c_get_failure_before_the_count_still_answers_with_the_mapped_status(
        dicom_server: tuple[DicomServer, Metrics]) -> None:
    server, _ = dicom_server
    assoc = associate(server.port, GET)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    try:
        answers = [(int(s.Status), s) for s, _ in assoc.send_c_get(query, GET)]
    finally:
        assoc.release()
    assert [code for code, _ in answers] == [0xA900]
    assert answers[0][1].ErrorComment == "a retrieve needs at least one unique key"


def test_n_create_reply_and_attribute_identifier_list(
        dicom_server: tuple[DicomServer, Metrics]) -> None:
    server, _ = dicom_server
    assoc = associate(server.port, MPPS)
    try:
        good = Dataset()
        good.PerformedProcedureStepStatus = "IN PROGRESS"
        status, reply = assoc.send_n_create(good, MPPS, "1.2.3.4.5")
        assert status.Status == SUCCESS
        assert reply.PerformedProcedureStepStatus == "IN PROGRESS"
        bad = Dataset()
        bad.Modality = "CT"
        status, reply = assoc.send_n_create(bad, MPPS, "1.2.3.4.6")
    finally:
        assoc.release()
    assert status.Status == 0x0120
    assert status.ErrorComment == "PerformedProcedureStepStatus is missing"
    # pynetdicom's N-CREATE response has no Attribute Identifier List (N-SET's has).
    assert "AttributeIdentifierList" not in status
    assert reply is None


def test_dispatcher_refuses_two_operations_for_one_class() -> None:
    dispatcher = Dispatcher(lambda op: op.handler)
    op = Operation(evt.EVT_C_FIND, lambda e: None, Service.C_FIND, "a", frozenset({MWL}))
    dispatcher.add(op)
    with pytest.raises(ValueError, match="two operations for EVT_C_FIND"):
        dispatcher.add(op)
    default = Operation(evt.EVT_C_STORE, lambda e: None, Service.C_STORE, "store")
    dispatcher.add(default)
    with pytest.raises(ValueError, match="two default operations"):
        dispatcher.add(default)
    assert [e.name for e in dispatcher.events()] == ["EVT_C_FIND", "EVT_C_STORE"]


def test_pacs_errors_are_warnings_not_errors(dicom_server: tuple[DicomServer, Metrics]) -> None:
    server, _ = dicom_server
    assoc = associate(server.port, MWL)
    with capture_logs() as logs:
        try:
            find(assoc, MWL)
        finally:
            assoc.release()
    failed = [e for e in logs if e["event"] == "dimse.failed"]
    assert len(failed) == 1 and failed[0]["log_level"] == "warning"
    assert failed[0]["error"] == "QueryRetrieveLevel is missing"
    assert not [e for e in logs if e["event"] == "dimse.error"]
    assert issubclass(InvalidQuery, PacsError)
