"""C-STORE sub-operations (C-GET, C-MOVE) sent straight from the archived file: an
override module of pynetdicom (with dicom/transport.py and dicom/reactor.py; pinned by
tests/unit/test_transport_pins.py), used on the event-driven transport only.

Upstream `Association.send_c_store(path)` per sub-operation: builds a `C_STORE`
primitive through validating setters, reads the File Meta with pydicom
(`split_dataset`), converts the primitive into a `C_STORE_RQ` message (each command
element set through pydicom, the command set encoded twice for its group length),
then `encode_msg` yields one `P_DATA` primitive per fragment, each put on the DUL
thread's queue, where `DT-1` builds a `P_DATA_TF` PDU object from it and encodes it.
For a 39 KB instance that is ~1.2 ms of the ~2.5 ms of server CPU a sub-operation
cost (py-spy, docs/performance.md "Results: C-GET and C-MOVE from the file").

Here the command set comes from `store_rq_command` (a direct Implicit VR Little
Endian encoding, the same bytes), the data set bytes are read after the File Meta
group (its length from (0002,0000), no pydicom) in chunks of about 256 KiB, and each
chunk becomes the finished P-DATA-TF PDUs (`pdata_tf`, one PDV each, as upstream
fragments) in one `RawPData` queue item, which `RawSendStateMachine` writes to the
socket as it is: one hand-off and one `send` per chunk instead of one per fragment.
What goes on the wire is byte for byte upstream's (tests/unit/test_store_send.py).

The C-STORE-RSP coming back: upstream decodes its command set with pydicom into a
message, then converts it into a primitive (~0.9 ms under load, a few elements);
`RetrieveDimse` reads a response of only the usual elements with `struct` and fills
the same `C_STORE` primitive through its own setters (~0.03 ms); any other response is
upstream's.

Upstream change that would remove this module: a command set encoder that does not
go through pydicom, and a DUL that takes encoded PDUs (or sends a P-DATA's fragments
in one write).
"""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom._handlers import (
    standard_dimse_recv_handler,
    standard_dimse_sent_handler,
    standard_pdu_sent_handler,
)
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_GET, C_MOVE, C_STORE
from pynetdicom.fsm import StateMachine
from pynetdicom.pdu_primitives import P_DATA

from pacs_server.dicom.command_set import command_elements
from pacs_server.dicom.reactor import _element, encode_response

# Preamble, "DICM", then (0002,0000) UL 4 in Explicit VR Little Endian (PS3.10 7.1).
_META_START = 132
_GROUP_LENGTH = b"\x02\x00\x00\x00UL\x04\x00"
_HEADER = _META_START + len(_GROUP_LENGTH) + 4
# Bytes read from the file per queue item (rounded to whole fragments): a 1 GB instance
# is never in memory; with file_sending.SEND_QUEUE_PDUS items queued at most ~4 MiB.
CHUNK_BYTES = 256 * 1024


class RawPData(P_DATA):
    """A P-DATA request already encoded: one or more whole P-DATA-TF PDUs."""

    def __init__(self, encoded: bytes) -> None:
        super().__init__()
        self.encoded = encoded


# Where an Evt9 (P-DATA request) leads in the states where upstream sends it (PS3.8
# 9.2, DT-1 and AR-7); in any other state upstream's action runs (it sends nothing).
_RAW_NEXT = {"Sta6": "Sta6", "Sta7": "Sta8"}


class RawSendStateMachine(StateMachine):
    """The DUL state machine; a queued `RawPData` is written to the socket as it is."""

    def do_action(self, event: str) -> None:
        """Upstream's action, except Evt9 with a `RawPData` first in the queue.

        Upstream (DT-1, AR-7): `P_DATA_TF(primitive)` builds a PDU object with one
        item object per PDV, `encode()` assembles the bytes, then EVT_PDU_SENT fires
        (nothing of ours listens: `raw_send_allowed`).
        Upstream change that removes this: a DUL that accepts encoded PDUs.
        """
        dul = self.dul
        nxt = _RAW_NEXT.get(self.current_state) if event == "Evt9" else None
        if nxt is not None:
            pending = dul.to_provider_queue.queue
            if pending and isinstance(pending[0], RawPData):
                item = dul.to_provider_queue.get(False)
                if dul.socket is not None:
                    # A view: upstream's send() slices what is left after a partial
                    # send, a copy of up to a whole chunk each time.
                    dul.socket.send(memoryview(item.encoded))  # type: ignore[arg-type, union-attr]
                self.transition(nxt)
                return
        super().do_action(event)


def _text(value: str, pad: bytes) -> bytes:
    raw = value.encode("ascii")
    return raw + pad * (len(raw) % 2)


def store_rq_command(sop_class: str, sop_instance: str, msg_id: int, priority: int,
                     originator_aet: str | None = None,
                     originator_id: int | None = None) -> bytes:
    """The command set of a C-STORE-RQ with a data set (PS3.7 9.3.1.1, Implicit VR
    Little Endian, elements in tag order), as pynetdicom encodes it."""
    parts = [
        _element(0x0002, _text(sop_class, b"\0")),
        _element(0x0100, b"\x01\x00"),
        _element(0x0110, struct.pack("<H", msg_id)),
        _element(0x0700, struct.pack("<H", priority)),
        _element(0x0800, b"\x01\x00"),
        _element(0x1000, _text(sop_instance, b"\0")),
    ]
    if originator_aet is not None:
        parts.append(_element(0x1030, _text(originator_aet.strip(), b" ")))
    if originator_id is not None:
        parts.append(_element(0x1031, struct.pack("<H", originator_id)))
    body = b"".join(parts)
    return _element(0x0000, struct.pack("<I", len(body))) + body


def pdata_tf(data: bytes | memoryview, context_id: int, fragment: int, more: int,
             last: int, final: bool = True) -> list[bytes | memoryview]:
    """`data` as P-DATA-TF PDUs of one PDV each (PS3.8 9.3.5), `fragment` bytes per
    PDV, each PDV's control header `more` and, on the last when `final`, `last`."""
    out: list[bytes | memoryview] = []
    total = len(data)
    start = 0
    while True:
        piece = data[start:start + fragment]
        end = start + fragment >= total
        header = last if end and final else more
        out.append(struct.pack(">BBIIBB", 0x04, 0x00, len(piece) + 6, len(piece) + 2,
                               context_id, header))
        out.append(piece)
        start += fragment
        if end:
            return out


def data_set_offset(fh: Any, size: int) -> int | None:
    """Where the data set starts in an open Part-10 file: after the File Meta group, as
    its (0002,0000) group length says; None when the file does not start that way (the
    caller then lets pydicom find it)."""
    head = fh.read(_HEADER)
    if len(head) < _HEADER or head[128:132] != b"DICM" \
            or head[_META_START:_META_START + 8] != _GROUP_LENGTH:
        return None
    offset = _HEADER + int.from_bytes(head[_HEADER - 4:_HEADER], "little")
    if offset > size:
        return None
    fh.seek(offset)
    if fh.read(2) == b"\x02\x00":      # still File Meta: a wrong group length
        return None
    return offset


def fragment_size(max_pdu: int) -> int:
    """Bytes of a PDV's value per P-DATA-TF for the peer's maximum PDU length, as
    upstream fragments (0: unlimited, one fragment)."""
    return max_pdu - 6 if max_pdu else 0


def send_file(send: Any, path: Path, command: bytes, context_id: int, max_pdu: int,
              ahead: bytes = b"") -> bool:
    """Put the C-STORE-RQ (`command`, then the data set read from `path`) on the DUL
    queue with `send(RawPData)`, the PDUs `ahead` (a C-GET's last pending response)
    first in the same item; False (nothing sent) when the file's data set cannot
    be found without pydicom or the peer takes PDUs of any length (max 0): the caller
    then sends it as upstream does.

    Raises:
        OSError: the file cannot be opened or read.
    """
    frag = fragment_size(max_pdu)
    if frag <= 0:
        return False
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        offset = data_set_offset(fh, size)
        if offset is None:
            return False
        fh.seek(offset)
        remaining = size - offset
        step = max(1, CHUNK_BYTES // frag) * frag
        parts: list[bytes | memoryview] = [ahead] if ahead else []
        parts += pdata_tf(command, context_id, frag, 0x01, 0x03)
        while True:
            chunk = fh.read(min(step, remaining))
            if len(chunk) != min(step, remaining):
                raise OSError(f"{path}: file shrank while being sent")
            remaining -= len(chunk)
            parts += pdata_tf(memoryview(chunk), context_id, frag, 0x00, 0x02,
                              final=remaining == 0)
            send(RawPData(b"".join(parts)))
            if remaining == 0:
                return True
            parts = []



def raw_send_allowed(assoc: Any) -> bool:
    """Whether skipping upstream's per-message and per-PDU events loses nothing: only
    pynetdicom's standard logging handlers are bound to EVT_DIMSE_SENT and EVT_PDU_SENT
    (they log nothing for a C-STORE-RQ or a P-DATA-TF below DEBUG), none to
    EVT_FSM_TRANSITION or EVT_DATA_SENT (handed a view of several PDUs), and pynetdicom
    does not log at DEBUG."""
    if _LOG.isEnabledFor(logging.DEBUG) or assoc.get_handlers(evt.EVT_FSM_TRANSITION) \
            or assoc.get_handlers(evt.EVT_DATA_SENT):
        return False
    return all(h[0] is standard_dimse_sent_handler
               for h in assoc.get_handlers(evt.EVT_DIMSE_SENT)) \
        and all(h[0] is standard_pdu_sent_handler
                for h in assoc.get_handlers(evt.EVT_PDU_SENT))


_LOG = logging.getLogger("pynetdicom")


_RETRIEVE_RESPONSES = (C_GET, C_MOVE)

# The elements of a plain C-STORE-RSP (PS3.7 9.3.1.2): group length, Affected SOP Class
# UID, Command Field, Message ID Being Responded To, Command Data Set Type, Status,
# Affected SOP Instance UID; a response with anything else (Error Comment, Offending
# Element...) is decoded by upstream.
_UL, _US, _UI = 4, 2, 0
_RSP_ELEMENTS = {0x0000: _UL, 0x0002: _UI, 0x0100: _US, 0x0120: _US, 0x0800: _US,
                 0x0900: _US, 0x1000: _UI}
_RSP_REQUIRED = (0x0000, 0x0100, 0x0120, 0x0800, 0x0900)


def store_response(command: bytes) -> C_STORE | None:
    """The C-STORE response primitive of a command set holding only the elements of a
    plain C-STORE-RSP, else None (upstream then decodes it)."""
    values = command_elements(command, _RSP_ELEMENTS)
    if values is None:
        return None
    if any(elem not in values for elem in _RSP_REQUIRED) \
            or int.from_bytes(values[0x0000], "little") != len(command) - 12 \
            or values[0x0100] != b"\x01\x80" or values[0x0800] != b"\x01\x01":
        return None
    rsp = PlainStoreResponse()
    rsp.MessageIDBeingRespondedTo = int.from_bytes(values[0x0120], "little")
    rsp.Status = int.from_bytes(values[0x0900], "little")
    unread = rsp.unread
    if 0x0002 in values:
        unread["AffectedSOPClassUID"] = values[0x0002].rstrip(b"\0 ").decode("ascii")
    if 0x1000 in values:
        unread["AffectedSOPInstanceUID"] = values[0x1000].rstrip(b"\0 ").decode("ascii")
    return rsp


def _lazy_uid(keyword: str) -> property:
    upstream = cast(property, getattr(C_STORE, keyword))

    def get(self: PlainStoreResponse) -> Any:
        text = self.unread.pop(keyword, None)
        if text is not None:
            upstream.fset(self, text)       # type: ignore[misc]
        return upstream.fget(self)          # type: ignore[misc]

    def put(self: PlainStoreResponse, value: Any) -> None:
        self.unread.pop(keyword, None)
        upstream.fset(self, value)          # type: ignore[misc]
    return property(get, put)


class PlainStoreResponse(C_STORE):
    """The `C_STORE` of a plain C-STORE-RSP whose UIDs go through upstream's setters
    (a `UID` object, two regular expressions) when first read: nothing reads them on a
    retrieve, and they cost ~10% of a sub-operation's CPU (py-spy, docs/performance.md
    "Results: the retrieve SCP loop")."""

    def __init__(self) -> None:
        self.unread: dict[str, str] = {}
        super().__init__()

    AffectedSOPClassUID = _lazy_uid("AffectedSOPClassUID")
    AffectedSOPInstanceUID = _lazy_uid("AffectedSOPInstanceUID")


class RetrieveDimse(DIMSEServiceProvider):
    """A DIMSE provider mixin of the associations that carry a retrieve: a plain
    C-STORE-RSP in one fragment becomes its primitive without pydicom, and a C-GET or
    C-MOVE response goes out as finished PDUs."""

    def send_msg(self, primitive: Any, context_id: int) -> None:
        """A C-GET/C-MOVE response as one `RawPData`, else the next class's `send_msg`.

        Upstream (and dicom/reactor.py's `ResponseDIMSE`, whose command set encoding
        this uses): one P-DATA per fragment, each a hand-off to the DUL thread that
        builds and encodes a `P_DATA_TF` object (~0.02-0.07 ms for a pending response
        of a few elements, one per sub-operation).
        Upstream change that removes this: see the module docstring.
        """
        if type(primitive) in _RETRIEVE_RESPONSES \
                and isinstance(self.dul.state_machine, RawSendStateMachine) \
                and raw_send_allowed(self.assoc):
            encoded = response_pdus(primitive, context_id, self.maximum_pdu_size)
            if encoded is not None:
                self.dul.send_pdu(RawPData(encoded))
                return
        super().send_msg(primitive, context_id)

    def receive_primitive(self, primitive: Any) -> None:
        """Upstream's, except for a C-STORE-RSP read by `store_response`.

        Upstream: every message through `DIMSEMessage.decode_msg` (pydicom decodes the
        command set into a Dataset) and `message_to_primitive`, then EVT_DIMSE_RECV
        with the message (only pynetdicom's logging handler listens, which logs
        nothing below INFO: `raw_receive_allowed`).
        Upstream change that removes this: a command set decoder without pydicom.
        """
        pdvs = getattr(primitive, "presentation_data_value_list", None)
        if self.message is None and pdvs and len(pdvs) == 1:
            context_id, data = pdvs[0]
            if data[:1] == b"\x03" and raw_receive_allowed(self.assoc):
                try:
                    rsp = store_response(data[1:])
                except (ValueError, UnicodeDecodeError):
                    rsp = None          # upstream reports it
                if rsp is not None:
                    self.msg_queue.put((context_id, rsp))
                    return
        super().receive_primitive(primitive)


def response_pdus(primitive: Any, context_id: int, max_pdu: int) -> bytes | None:
    """A C-GET/C-MOVE (or C-FIND/C-STORE) response as P-DATA-TF PDUs, as upstream
    fragments it, or None when `encode_response` leaves it to upstream."""
    command = encode_response(primitive)
    frag = fragment_size(max_pdu)
    if command is None or frag <= 0:
        return None
    parts = pdata_tf(command, context_id, frag, 0x01, 0x03)
    identifier = getattr(primitive, "Identifier", None)
    data = identifier.getvalue() if identifier is not None else b""
    if data:
        parts += pdata_tf(data, context_id, frag, 0x00, 0x02)
    return b"".join(parts)


def raw_receive_allowed(assoc: Any) -> bool:
    """Whether skipping EVT_DIMSE_RECV loses nothing (only pynetdicom's standard
    handler, which logs a C-STORE-RSP at INFO, and pynetdicom logs below that)."""
    return not _LOG.isEnabledFor(logging.INFO) and all(
        h[0] is standard_dimse_recv_handler for h in assoc.get_handlers(evt.EVT_DIMSE_RECV))


class StatusDataset(Dataset):
    """A status Dataset that cannot be changed once made, so that one can be shared."""

    _sealed = False

    def __init__(self, status: int) -> None:
        super().__init__()
        self.Status = status
        object.__setattr__(self, "_sealed", True)

    def __setattr__(self, name: str, value: Any) -> None:
        if self._sealed:
            raise TypeError("a shared status Dataset is read-only")
        super().__setattr__(name, value)

    def __setitem__(self, key: Any, value: Any) -> None:
        if self._sealed:
            raise TypeError("a shared status Dataset is read-only")
        super().__setitem__(key, value)

    def __delattr__(self, name: str) -> None:
        raise TypeError("a shared status Dataset is read-only")

    def __delitem__(self, key: Any) -> None:
        raise TypeError("a shared status Dataset is read-only")


_STATUSES: dict[int, StatusDataset] = {}
_MAX_STATUSES = 64


def plain_status(rsp: Any) -> Dataset | None:
    """What upstream's `_check_received_status` returns for a valid response carrying a
    status and no optional status element (one shared, read-only Dataset per status
    code: pynetdicom's retrieve SCPs only read its Status), else None.

    Upstream builds a new Dataset per response (~0.04-0.1 ms, several percent of a
    sub-operation).
    """
    if type(rsp) is PlainStoreResponse:     # valid as made; only these are optional
        if rsp.OffendingElement is not None or rsp.ErrorComment is not None:
            return None
    elif not rsp.is_valid_response or any(getattr(rsp, keyword, None) is not None
                                          for keyword in rsp.STATUS_OPTIONAL_KEYWORDS):
        return None
    code = int(rsp.Status)
    status = _STATUSES.get(code)
    if status is None:
        status = StatusDataset(code)
        if len(_STATUSES) < _MAX_STATUSES:
            _STATUSES[code] = status
    return status
