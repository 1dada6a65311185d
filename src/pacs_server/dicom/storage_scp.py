"""The Storage SCP around our C-STORE handler, and its C-STORE-RSP sent as finished PDUs.

An override module of pynetdicom (with dicom/transport.py and dicom/reactor.py; pinned
by tests/unit/test_transport_pins.py), used on the event-driven transport only.

Upstream, per received instance (`Association._serve_request` then
`StorageServiceClass.SCP`): the service class is looked up and instantiated, a C_STORE
response primitive is built through its validating setters (the two UIDs each checked
against the UID grammar), `attempt()` swaps the association's abort method around the
EVT_C_STORE trigger, `validate_status` copies the handler's status Dataset element by
element onto the primitive, and the DIMSE provider turns it into a message, encodes
the command set and hands the DUL thread one P-DATA per fragment, where DT-1 builds a
`P_DATA_TF` object per PDU and encodes it. With our handler (dicom/store.py) that was
~0.2 ms of the association thread's ~2.4 ms per small instance (docs/performance.md,
"Results: the Storage SCP around our handler (2026-12-01 night)"), for a reply of
seven short elements.

Here (`serve_store`, called from `PacsAssociation._serve_request` like `serve_find`)
the same EVT_C_STORE handler is triggered with the same Event, the receive file is
closed and removed as upstream does, and the C-STORE-RSP (PS3.7 9.3.1.2: Message ID
Being Responded To, Affected SOP Class and Instance UID, Status, and an Error Comment
and Offending Element when the status Dataset has them) is encoded directly
(`store_rsp_command`, Implicit VR Little Endian, the bytes pynetdicom encodes) and queued
as finished P-DATA-TF PDUs in one `RawPData` (dicom/store_send.py), which the DUL's
`RawSendStateMachine` writes as it is. A status Dataset with anything else in it, a
value pydicom would encode otherwise, and associations where an observer of the sent
messages or PDUs is bound (`raw_send_allowed`) take upstream's primitive and provider.
Byte for byte upstream's on the wire: tests/unit/test_storage_scp.py and
tests/integration/test_store_responses.py.

Upstream change that would remove this module: a Storage SCP that encodes its response
directly (no primitive setters, no message object) and a DUL that takes encoded PDUs.
"""

from __future__ import annotations

import os
import struct
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import _config, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import LOGGER, StorageServiceClass

from pacs_server.dicom.find_scp import run_scp, service_class_of
from pacs_server.dicom.reactor import ResponseDIMSE, _element
from pacs_server.dicom.store_send import (
    RawPData,
    RawSendStateMachine,
    fragment_size,
    pdata_tf,
    raw_send_allowed,
)

# The fixed elements of every C-STORE-RSP: Command Field 0x8001, Command Data Set Type
# 0x0101 (no data set).
_COMMAND_FIELD = _element(0x0100, b"\x01\x80")
_NO_DATA_SET = _element(0x0800, b"\x01\x01")
_U16 = struct.Struct("<H")
_TAG = struct.Struct("<HH")
_STATUSES = StorageServiceClass.statuses
# What a status Dataset may set on the response here (validate_status sets any keyword
# the primitive has; the others are upstream's to handle).
_STATUS_KEYWORDS = frozenset({"Status", "ErrorComment", "OffendingElement"})


def _uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\0" * (len(raw) % 2)


def store_rsp_command(msg_id: int, sop_class: str | None, sop_instance: str | None,
                      status: int, comment: str | None = None,
                      offending: list[int] | None = None) -> bytes:
    """The command set of a C-STORE-RSP (PS3.7 9.3.1.2; Implicit VR Little Endian,
    elements in tag order) as pynetdicom encodes it: UIDs padded with NUL, the Error
    Comment (LO) with a space, the Offending Element as tags (AT)."""
    parts = []
    if sop_class:
        parts.append(_element(0x0002, _uid(sop_class)))
    parts += [_COMMAND_FIELD, _element(0x0120, _U16.pack(msg_id)), _NO_DATA_SET,
              _element(0x0900, _U16.pack(status))]
    if offending is not None:
        parts.append(_element(0x0901, b"".join(_TAG.pack(t >> 16, t & 0xFFFF)
                                               for t in offending)))
    if comment is not None:
        raw = comment.encode("ascii")
        parts.append(_element(0x0902, raw + b" " * (len(raw) % 2)))
    if sop_instance:
        parts.append(_element(0x1000, _uid(sop_instance)))
    body = b"".join(parts)
    return _element(0x0000, struct.pack("<I", len(body))) + body


def _status_fields(status: Any) -> tuple[int, str | None, list[int] | None] | None:
    """(Status, Error Comment, Offending Element) of a handler's status when it holds
    nothing `store_rsp_command` would encode differently from pydicom; else None."""
    if type(status) is int:
        return (status, None, None) if 0 <= status <= 0xFFFF else None
    if not isinstance(status, Dataset) or "Status" not in status:
        return None
    if any(elem.keyword not in _STATUS_KEYWORDS for elem in status):
        return None
    code = status.Status
    comment = status.get("ErrorComment")
    offending = status.get("OffendingElement")
    if type(code) is not int or not 0 <= code <= 0xFFFF:
        return None
    if comment is not None and (type(comment) is not str or not comment.isascii()):
        return None
    if offending is not None:
        tags = [offending] if isinstance(offending, int) else list(offending)
        if not all(isinstance(t, int) and 0 <= t <= 0xFFFFFFFF for t in tags):
            return None
        offending = [int(t) for t in tags]
    return code, comment, offending


def _remove(handle: Any) -> None:
    """Close and remove a receive file (the archive has usually kept it: adopted)."""
    if handle:
        handle.close()
        try:
            os.unlink(handle.name)
        except OSError:
            pass


class StoreSCP:
    """One C-STORE request served as `StorageServiceClass.SCP` serves it."""

    def __init__(self, assoc: Association, req: C_STORE, context: PresentationContext
                 ) -> None:
        self.assoc, self.req, self.context = assoc, req, context
        self.cx_id = cast(int, context.context_id)

    def serve(self) -> None:
        """Upstream's `StorageServiceClass.SCP` with the response sent by `respond`.

        Upstream: the response primitive is built (and its UIDs validated) before the
        handler runs, and reaches the peer through the message object and one P-DATA
        per fragment (module docstring). Upstream change that would remove this: the
        module docstring's.
        """
        assoc, req = self.assoc, self.req
        # What attempt() does: the handler may abort, but must not wait for the
        # association thread, which is this one.
        assoc.abort = assoc._abort_nonblocking  # type: ignore[method-assign]
        failed = False
        try:
            status = evt.trigger(assoc, evt.EVT_C_STORE,
                                 {"request": req, "context": self.context.as_tuple})
        except Exception as exc:
            LOGGER.error("Exception in handler bound to 'evt.EVT_C_STORE'")
            LOGGER.exception(exc)
            failed = True
        finally:
            assoc.abort = assoc._abort_blocking  # type: ignore[method-assign]
            # Upstream leaves the receive file behind when the handler raised.
            _remove(req._dataset_file)
        if failed:
            self.respond(0xC211)        # attempt()'s error status, sent as upstream does
        elif assoc.is_established:
            self.respond(status)

    def respond(self, status: Any) -> None:
        """Send the C-STORE-RSP for the handler's `status` (int or status Dataset)."""
        fields = _status_fields(status)
        dul = self.assoc.dul
        if fields is None or not isinstance(dul.state_machine, RawSendStateMachine) \
                or not raw_send_allowed(self.assoc):
            self._upstream_response(status)
            return
        code, comment, offending = fields
        if code not in _STATUSES:
            LOGGER.warning(f"Unknown status value returned by callback - 0x{code:04X}")
        req = self.req
        command = store_rsp_command(cast(int, req.MessageID), req.AffectedSOPClassUID,
                                    req.AffectedSOPInstanceUID, code, comment, offending)
        frag = fragment_size(self.assoc.dimse.maximum_pdu_size) or len(command)
        dul.send_pdu(RawPData(b"".join(pdata_tf(command, self.cx_id, frag, 0x01, 0x03))))

    def _upstream_response(self, status: Any) -> None:
        """The response as upstream builds and sends it: the primitive through its
        setters, `validate_status`, the DIMSE provider."""
        req = self.req
        rsp = C_STORE()
        rsp.MessageID = req.MessageID
        rsp.MessageIDBeingRespondedTo = req.MessageID
        rsp.AffectedSOPInstanceUID = req.AffectedSOPInstanceUID
        rsp.AffectedSOPClassUID = req.AffectedSOPClassUID
        rsp = StorageServiceClass(self.assoc).validate_status(status, rsp)
        self.assoc.dimse.send_msg(rsp, self.cx_id)


def serve_store(assoc: Association, msg: Any, context_id: int) -> bool:
    """Serve a C-STORE request with `StoreSCP` where upstream's `_serve_request` would
    run `StorageServiceClass.SCP`; False (nothing done) for anything else, and on the
    stock transport.

    Upstream: `Association._serve_request` instantiates the class `uid_to_service_class`
    names and runs its SCP; there is no way to pass it another class.
    Upstream change that would remove this: a service class registry on the AE.
    """
    if msg.__class__ is not C_STORE or assoc._sent_release \
            or not isinstance(assoc.dimse, ResponseDIMSE) or not msg.is_valid_request:
        return False
    context = assoc._accepted_cx.get(context_id)
    if context is None:
        return False
    if not _config.UNRESTRICTED_STORAGE_SERVICE \
            and service_class_of(assoc, msg) is not StorageServiceClass:
        return False
    run_scp(assoc, StoreSCP(assoc, msg, context).serve)
    return True
