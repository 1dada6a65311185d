"""dicom/storage_scp.py encodes a C-STORE-RSP as pynetdicom's Storage SCP does: the
same P-DATA-TF bytes for every status our handler or a status Dataset may give (success,
warnings, failures with an Error Comment and Offending Element), and anything it would
encode differently is left to upstream."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import StorageServiceClass

from pacs_server.dicom.receive import ReceiveFile
from pacs_server.dicom.status import Service, failure
from pacs_server.dicom.storage_scp import StoreSCP, _status_fields, store_rsp_command
from pacs_server.dicom.store_send import fragment_size, pdata_tf
from pacs_server.errors import DatasetMismatch, StorageFull

CT = "1.2.840.10008.5.1.4.1.1.2"
INSTANCE = "1.2.826.0.1.3680043.8.498.12345678901234567890123"   # odd length


def status(code: int, comment: str | None = None, offending: Any = None) -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment is not None:
        ds.ErrorComment = comment
    if offending is not None:
        ds.OffendingElement = offending
    return ds


def with_error_id() -> Dataset:
    ds = status(0xA700, "full")
    ds.ErrorID = 1          # not a C-STORE-RSP element: upstream warns and drops it
    return ds


def upstream(handler_status: Any, max_pdu: int, instance: str = INSTANCE) -> bytes:
    """The PDUs of `StorageServiceClass.SCP`'s response and the DIMSE provider."""
    rsp = C_STORE()
    rsp.MessageID = 7
    rsp.MessageIDBeingRespondedTo = 7
    rsp.AffectedSOPInstanceUID = instance
    rsp.AffectedSOPClassUID = CT
    rsp = StorageServiceClass(None).validate_status(handler_status, rsp)  # type: ignore[arg-type]
    msg = C_STORE_RSP()
    msg.primitive_to_message(rsp)
    return b"".join(P_DATA_TF(p).encode() for p in msg.encode_msg(3, max_pdu))


def ours(handler_status: Any, max_pdu: int, instance: str = INSTANCE) -> bytes:
    fields = _status_fields(handler_status)
    assert fields is not None
    command = store_rsp_command(7, CT, instance, *fields)
    frag = fragment_size(max_pdu) or len(command)
    return b"".join(pdata_tf(command, 3, frag, 0x01, 0x03))


STATUSES = {
    "success": 0x0000,
    "success-ds": status(0x0000),
    "coercion": status(0xB000, "Coercion of data elements"),
    "elements-discarded": status(0xB006, "odd"),
    "does-not-match-class": status(0xB007, "Data Set does not match SOP Class",
                                    [0x00100010, 0x00080018]),
    "one-offending": status(0xB007, None, 0x00100020),
    "out-of-resources": failure(Service.C_STORE, StorageFull("archive write failed: full")),
    "does-not-match": failure(Service.C_STORE, DatasetMismatch("SOPInstanceUID is missing")),
    "cannot-understand": status(0xC000, "x" * 64, [0x7FE00010]),
    "handler-exception": 0xC211,
    "empty-comment": status(0xA900, ""),
    "unknown-status": 0x1234,
}


@pytest.mark.parametrize("handler_status", list(STATUSES.values()), ids=list(STATUSES))
@pytest.mark.parametrize("max_pdu", [0, 16384, 40])
def test_responses_are_upstreams_bytes(handler_status: Any, max_pdu: int) -> None:
    assert ours(handler_status, max_pdu) == upstream(handler_status, max_pdu)


def test_even_length_uid() -> None:
    even = INSTANCE + "4"
    assert ours(0x0000, 0, even) == upstream(0x0000, 0, even)


@pytest.mark.parametrize("handler_status", [
    None, "0x0000", 0x10000, -1, True, status(0xA700, "Plein à craquer"),
    Dataset(), with_error_id(),
], ids=["none", "str", "too-big", "negative", "bool", "non-ascii", "no-status",
        "error-id"])
def test_anything_else_is_left_to_upstream(handler_status: Any) -> None:
    assert _status_fields(handler_status) is None


class _Dimse:
    maximum_pdu_size = 16384

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send_msg(self, primitive: Any, context_id: int) -> None:
        self.sent.append((primitive, context_id))


class _Dul:
    state_machine = None        # not RawSendStateMachine: upstream's provider sends


class _Assoc:
    """What StoreSCP asks of an association, with `handler` bound to EVT_C_STORE."""

    def __init__(self, handler: Any) -> None:
        self.handler = handler
        self.dimse, self.dul = _Dimse(), _Dul()
        self.is_established = True
        self._abort_blocking, self._abort_nonblocking = "blocking", "nonblocking"
        self.abort = self._abort_blocking
        self.abort_seen: list[Any] = []

    def get_handlers(self, event: Any) -> Any:
        return (self.handler, None) if event is evt.EVT_C_STORE else []


def _request(path: Path) -> C_STORE:
    req = C_STORE()
    req.MessageID = 9
    req.AffectedSOPClassUID = CT
    req.AffectedSOPInstanceUID = INSTANCE
    req._dataset_path = path
    req._dataset_file = ReceiveFile(str(path.parent))
    return req


def _context() -> PresentationContext:
    cx = PresentationContext()
    cx.context_id = 5
    cx.abstract_syntax = CT
    cx.transfer_syntax = ["1.2.840.10008.1.2.1"]
    return cx


@pytest.mark.parametrize(("handler_result", "status", "comment"), [
    (0x0000, 0x0000, None),
    (failure(Service.C_STORE, StorageFull("archive write failed")), 0xA700,
     "archive write failed"),
    (RuntimeError("a bug"), 0xC211, None),
], ids=["success", "failure", "handler-raised"])
def test_store_scp_answers_and_removes_the_receive_file(
        tmp_path: Path, handler_result: Any, status: int, comment: str | None) -> None:
    def handler(event: Any) -> Any:
        assoc.abort_seen.append(assoc.abort)
        assert event.request is req and event.context.context_id == 5
        if isinstance(handler_result, Exception):
            raise handler_result
        return handler_result

    assoc = _Assoc(handler)
    req = _request(tmp_path / "x.dcm")
    name = req._dataset_file.name
    assert Path(name).exists()
    StoreSCP(assoc, req, _context()).serve()  # type: ignore[arg-type]
    assert assoc.abort_seen == ["nonblocking"] and assoc.abort == "blocking"
    assert not Path(name).exists()
    ((rsp, cx_id),) = assoc.dimse.sent
    assert (cx_id, rsp.Status, rsp.ErrorComment) == (5, status, comment)
    assert (rsp.MessageIDBeingRespondedTo, rsp.AffectedSOPInstanceUID) == (9, INSTANCE)
