"""dicom/reactor.py's pieces on their own: the self-pipe, the waking queue, the
A-ASSOCIATE-RQ decoded once per distinct proposal, and the responses encoded directly
(byte for byte what pynetdicom encodes) (the reactors themselves run in
tests/integration/test_transport_reactors.py and every interop test)."""

from __future__ import annotations

import select
from io import BytesIO
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom.dimse import _RSP_TO_MESSAGE
from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_GET, C_MOVE, C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import StoragePresentationContexts, build_context

from pacs_server.dicom.reactor import (
    Wakeup,
    WakingQueue,
    decoded_associate_rq,
    encode_response,
    pdv_fragments,
)

NATIVE = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]


def readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def test_wakeup_is_readable_from_set_until_clear() -> None:
    wake = Wakeup()
    assert not readable(wake.fileno())
    wake.set()
    wake.set()                  # a second set before the clear writes nothing more
    assert readable(wake.fileno())
    wake.clear()
    assert not readable(wake.fileno())
    wake.close()
    wake.set()                  # after close: nothing is written to a reused fd


def test_waking_queue_calls_back_on_every_put() -> None:
    calls: list[str] = []
    q = WakingQueue(lambda: calls.append("put"))   # under the queue's mutex: no q.* here
    q.put("a")
    q.put_nowait("b")
    assert calls == ["put", "put"]
    assert q.get() == "a"
    assert calls == ["put", "put"]


def associate_rq(contexts: int) -> bytes:
    prim = A_ASSOCIATE()
    prim.application_context_name = "1.2.840.10008.3.1.1.1"
    prim.calling_ae_title, prim.called_ae_title = "STORESCU", "PACS"
    cxs = []
    for i, cx in enumerate(StoragePresentationContexts[:contexts]):
        c = build_context(cx.abstract_syntax, NATIVE)
        c.context_id = 2 * i + 1
        cxs.append(c)
    prim.presentation_context_definition_list = cxs
    item = MaximumLengthNotification()
    item.maximum_length_received = 16384
    prim.user_information = [item]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(prim)
    return bytes(pdu.encode())


def test_associate_rq_decoded_once_per_proposal() -> None:
    raw = associate_rq(len(StoragePresentationContexts))   # ~storescu's proposal
    first, again = decoded_associate_rq(raw), decoded_associate_rq(bytes(raw))
    assert first is again
    assert decoded_associate_rq(associate_rq(3)) is not first

    upstream = A_ASSOCIATE_RQ()
    upstream.decode(raw)
    expected = upstream.to_primitive()
    count = len(expected.presentation_context_definition_list)
    assert count > 100
    a, b = first.to_primitive(), again.to_primitive()
    assert a is not b
    for got in (a, b):
        assert got.calling_ae_title == expected.calling_ae_title
        assert got.called_ae_title == expected.called_ae_title
        assert [(cx.context_id, cx.abstract_syntax, cx.transfer_syntax)
                for cx in got.presentation_context_definition_list] == \
            [(cx.context_id, cx.abstract_syntax, cx.transfer_syntax)
             for cx in expected.presentation_context_definition_list]
        assert got.maximum_length_received == 16384
    # What an association does to its primitive stays with it (AE-6 sets a
    # rejection's result on it).
    a.result = 0x01
    a.presentation_context_definition_list.pop()
    assert b.result is None
    assert len(b.presentation_context_definition_list) == count
    assert len(decoded_associate_rq(raw).to_primitive()
               .presentation_context_definition_list) == count


def primitive(kind: type, **values: Any) -> Any:
    out = kind()
    for keyword, value in values.items():
        setattr(out, keyword, value)
    return out


def find_rsp(status: int = 0xFF00, with_identifier: bool = True) -> C_FIND:
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.PatientName = "Doe^John"
    ident.StudyInstanceUID = "1.2.3.4.5.6.7.8.91"
    return primitive(C_FIND, MessageIDBeingRespondedTo=7, Status=status,
                     AffectedSOPClassUID="1.2.840.10008.5.1.4.1.2.2.1",
                     Identifier=BytesIO(encode(ident, True, True)) if with_identifier
                     else None)


def get_rsp(kind: type = C_GET) -> Any:
    return primitive(kind, MessageIDBeingRespondedTo=3, Status=0xFF00,
                     AffectedSOPClassUID="1.2.840.10008.5.1.4.1.2.2.3",
                     NumberOfRemainingSuboperations=299, NumberOfCompletedSuboperations=1,
                     NumberOfFailedSuboperations=0, NumberOfWarningSuboperations=0)


def store_rsp(comment: str | None = None) -> C_STORE:
    return primitive(C_STORE, MessageIDBeingRespondedTo=65535,
                     AffectedSOPClassUID="1.2.840.10008.5.1.4.1.1.2",
                     AffectedSOPInstanceUID="1.2.3.4.5",
                     Status=0x0000 if comment is None else 0xA700, ErrorComment=comment)


def upstream_pdvs(primitive: Any, max_pdu: int) -> list[Any]:
    msg = _RSP_TO_MESSAGE[type(primitive)]()
    msg.primitive_to_message(primitive)
    return [p.presentation_data_value_list for p in msg.encode_msg(5, max_pdu)]


def echo_rsp() -> C_ECHO:
    return primitive(C_ECHO, MessageIDBeingRespondedTo=1, Status=0x0000,
                     AffectedSOPClassUID="1.2.840.10008.1.1")


@pytest.mark.parametrize("primitive", [
    find_rsp(), find_rsp(0xFF01), find_rsp(0x0000, with_identifier=False), get_rsp(),
    get_rsp(C_MOVE), store_rsp(), echo_rsp()],
    ids=["find", "find-ff01", "find-final", "get", "move", "store", "echo"])
@pytest.mark.parametrize("max_pdu", [0, 16384, 40])
def test_responses_encoded_as_upstream_does(primitive: Any, max_pdu: int) -> None:
    command = encode_response(primitive)
    assert command is not None
    ours = pdv_fragments(command, 5, max_pdu, b"\x01", b"\x03")
    identifier = getattr(primitive, "Identifier", None)
    if identifier is not None:
        ours += pdv_fragments(identifier.getvalue(), 5, max_pdu, b"\x00", b"\x02")
    assert [p.presentation_data_value_list for p in ours] == upstream_pdvs(primitive, max_pdu)


def test_responses_with_an_error_comment_are_left_to_upstream() -> None:
    assert encode_response(store_rsp("Storage is full")) is None
    assert encode_response(primitive(C_FIND, MessageID=1)) is None
