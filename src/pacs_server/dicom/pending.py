"""The pending C-GET/C-MOVE-RSPs of one request (PS3.4 C.4.2.3.1, C.4.3.3.1): encoded
once, only the four counts changed per response (`PendingResponses`), and for a C-MOVE
sent at most once per `PENDING_INTERVAL_S` (`PendingPacer`). Used by
dicom/retrieve_scp.py."""

from __future__ import annotations

import struct
import time

from pynetdicom.dimse_primitives import C_GET, C_MOVE

from pacs_server.dicom.reactor import encode_response
from pacs_server.dicom.store_send import fragment_size, pdata_tf

# (0000,1020)-(0000,1023) US 2: Remaining, Completed, Failed, Warning Sub-operations,
# the last elements of a pending C-GET/C-MOVE-RSP (PS3.7 C.4.2.1, C.4.3.1; tag order).
_COUNTS = struct.Struct("<" + "HHIH" * 4)
_COUNTS_SIZE = _COUNTS.size


class PendingResponses:
    """The pending C-GET/C-MOVE-RSPs of one request, as P-DATA-TF PDUs."""

    def __init__(self, rsp: C_GET | C_MOVE, context_id: int, max_pdu: int) -> None:
        template = type(rsp)()
        template.MessageIDBeingRespondedTo = rsp.MessageIDBeingRespondedTo
        template.AffectedSOPClassUID = rsp.AffectedSOPClassUID
        template.Status = 0xFF00
        for keyword in _COUNT_KEYWORDS:
            setattr(template, keyword, 0)
        command = encode_response(template)
        if command is None:
            raise ValueError("the pending response cannot be encoded directly")
        self._prefix = command[:-_COUNTS_SIZE]
        self._cx = context_id
        self._frag = fragment_size(max_pdu) or len(command)

    def pdus(self, remaining: int, completed: int, failed: int, warning: int) -> bytes:
        """One pending response with these counts (Status 0xFF00, no identifier)."""
        command = self._prefix + _COUNTS.pack(0, 0x1020, 2, remaining, 0, 0x1021, 2, completed,
                                              0, 0x1022, 2, failed, 0, 0x1023, 2, warning)
        return b"".join(pdata_tf(command, self._cx, self._frag, 0x01, 0x03))


# Pending C-MOVE-RSPs (`PendingPacer`): at most one per this many seconds, after the
# sub-operation that ends the interval (the first at once). PS3.4 C.4.2.3.1 makes pending responses
# optional ("Optionally, the SCP may generate responses ... with status equal to
# Pending"), each with the four counts; every one costs a write on the requester's
# association and a wake-up of its DUL thread: with one per sub-operation a C-MOVE to a
# fast destination (~2-4 ms per sub-operation) cost 0.83 ms of server CPU and 22
# context switches per sub-operation, without 0.74 ms and 13 (docs/performance.md
# "Results: C-MOVE sending (2026-12-02)"). Sub-operations slower than this
# still get one each, as from dcmtk and Orthanc; the final response's counts are exact
# whatever was skipped, and C-CANCEL is looked at before every sub-operation.
PENDING_INTERVAL_S = 0.01

_COUNT_KEYWORDS = ("NumberOfRemainingSuboperations", "NumberOfCompletedSuboperations",
                   "NumberOfFailedSuboperations", "NumberOfWarningSuboperations")


class PendingPacer:
    """Whether a C-MOVE's next pending response is due: the first at once, then when
    `PENDING_INTERVAL_S` has passed since the last one sent."""

    def __init__(self) -> None:
        self._last: float | None = None

    def due(self) -> bool:
        """True (and the interval starts again) when a pending response is to be sent."""
        now = time.monotonic()
        if self._last is not None and now - self._last < PENDING_INTERVAL_S:
            return False
        self._last = now
        return True
