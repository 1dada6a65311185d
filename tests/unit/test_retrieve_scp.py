"""The pending C-GET/C-MOVE responses dicom/retrieve_scp.py sends from its template are
upstream's bytes, whatever the counts, Message ID, SOP class and maximum PDU length."""

from __future__ import annotations

from typing import Any

import pytest
from pynetdicom.dimse_messages import C_GET_RSP, C_MOVE_RSP
from pynetdicom.dimse_primitives import C_GET, C_MOVE
from pynetdicom.pdu import P_DATA_TF

from pacs_server.dicom.pending import PendingResponses


def upstream_pending(kind: type, msg_id: int, sop_class: str, counts: tuple[int, ...],
                     context_id: int, max_pdu: int) -> bytes:
    rsp: Any = kind()
    rsp.MessageIDBeingRespondedTo = msg_id
    rsp.AffectedSOPClassUID = sop_class
    rsp.Status = 0xFF00
    (rsp.NumberOfRemainingSuboperations, rsp.NumberOfCompletedSuboperations,
     rsp.NumberOfFailedSuboperations, rsp.NumberOfWarningSuboperations) = counts
    msg = C_GET_RSP() if kind is C_GET else C_MOVE_RSP()
    msg.primitive_to_message(rsp)
    return b"".join(P_DATA_TF(p).encode() for p in msg.encode_msg(context_id, max_pdu))


@pytest.mark.parametrize("kind", [C_GET, C_MOVE])
@pytest.mark.parametrize("sop_class", ["1.2.840.10008.5.1.4.1.2.2.3",    # odd length
                                       "1.2.840.10008.5.1.4.1.2.1.3"])
@pytest.mark.parametrize("max_pdu", [16384, 0, 40])
def test_pending_responses_equal_upstream(kind: type, sop_class: str, max_pdu: int) -> None:
    template: Any = kind()
    template.MessageIDBeingRespondedTo = 7
    template.AffectedSOPClassUID = sop_class
    pending = PendingResponses(template, 3, max_pdu)
    for counts in [(499, 1, 0, 0), (0, 250, 249, 1), (65534, 0, 1, 0), (1, 0, 0, 65535)]:
        assert pending.pdus(*counts) == upstream_pending(kind, 7, sop_class, counts, 3,
                                                         max_pdu)


def test_message_id_and_context_are_the_requests() -> None:
    template: Any = C_MOVE()
    template.MessageIDBeingRespondedTo = 65535
    template.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.2"
    ours = PendingResponses(template, 255, 16384).pdus(2, 3, 4, 5)
    assert ours == upstream_pending(C_MOVE, 65535, "1.2.840.10008.5.1.4.1.2.2.2",
                                    (2, 3, 4, 5), 255, 16384)
