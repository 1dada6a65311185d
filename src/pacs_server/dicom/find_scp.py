"""The C-FIND SCP's response loop, sending identifiers our handlers already encoded.

An override module of pynetdicom (with dicom/transport.py and dicom/reactor.py; pinned
by tests/unit/test_transport_pins.py). pynetdicom's `ServiceClass._c_find_scp` takes a
pydicom Dataset from the handler for every pending response, encodes it with pydicom
(`dsutils.encode`), wraps it in a BytesIO, sets the C_FIND primitive's Status and
Identifier through their validating setters, formats a log line, and hands the
primitive to the DIMSE provider: 0.6-1.9 ms of server CPU per response under load
(docs/performance.md, "C-FIND: the cost of one response"), for identifiers of a few
short elements. Here a handler may yield the identifier as `bytes`, already encoded in
the presentation context's transfer syntax (services/answers.py writes the bytes
pydicom would), and each pending response goes out from a command set encoded once
per request (`reactor.ResponseDIMSE.send_encoded`, events transport; on the stock
transport the primitive goes to upstream's provider with the bytes as its Identifier).
Everything else is upstream's: the EVT_C_FIND handler API (a yielded Dataset is encoded
as upstream does), C-CANCEL, the Success/Pending/Warning/Cancel/Failure handling and
its log lines, an Error Comment in a status Dataset, the end of the loop on A-ABORT or
A-RELEASE. Used for the Q/R FIND models and Modality Worklist, on both transports.

Upstream change that would remove this module: let `_c_find_scp` accept an encoded
identifier (bytes) from the handler, and send pending responses from a command set
encoded once per request.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from io import BytesIO
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import _config, evt
from pynetdicom._globals import (
    STATUS_CANCEL,
    STATUS_FAILURE,
    STATUS_PENDING,
    STATUS_SUCCESS,
    STATUS_WARNING,
)
from pynetdicom.association import LOGGER as ASSOC_LOGGER
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import decode, encode, pretty_dataset
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import (
    LOGGER,
    BasicWorklistManagementServiceClass,
    QueryRetrieveServiceClass,
    ServiceClass,
    attempt,
)
from pynetdicom.sop_class import uid_to_service_class

from pacs_server.dicom.reactor import encode_response

# How upstream logs a response of each final (or warning) category.
_OUTCOMES = {STATUS_CANCEL: "Cancel", STATUS_FAILURE: "Failure - {}",
             STATUS_SUCCESS: "Success", STATUS_WARNING: "Warning - {}"}


class EncodedFind(ServiceClass):
    """`_c_find_scp` taking `bytes` identifiers; mixed before a pynetdicom class."""

    def _c_find_scp(self, req: C_FIND, context: PresentationContext) -> None:
        """Upstream's C-FIND SCP, with pending responses sent from encoded identifiers.

        Upstream: per pending response, pydicom encodes the yielded Dataset and the
        primitive's setters validate Status and Identifier, then the whole command
        set is built and encoded again (module docstring: 0.6-1.9 ms per response).
        Upstream change that would remove this: the module docstring's.
        """
        cx_id = cast(int, context.context_id)
        syntax = context.transfer_syntax[0]
        rsp = C_FIND()
        rsp.MessageID = req.MessageID
        rsp.MessageIDBeingRespondedTo = req.MessageID
        rsp.AffectedSOPClassUID = req.AffectedSOPClassUID
        if _config.LOG_REQUEST_IDENTIFIERS:
            log_request(req, syntax)
        with attempt(rsp, self.dimse, cx_id, self.assoc) as ctx:
            ctx.error_msg = "Exception in handler bound to 'evt.EVT_C_FIND'"
            ctx.error_status = 0xC311
            generator = evt.trigger(ctx.assoc, evt.EVT_C_FIND, {
                "request": req, "context": context.as_tuple,
                "_is_cancelled": self.is_cancelled})
        if not ctx.success or not self.assoc.is_established:
            return
        if generator is None:
            generator = iter([(0x0000, None)])
        pending = _PendingSender(self, rsp, cx_id)
        ii = -1
        for ii, (result, exc_info) in enumerate(self._wrap_handler(generator)):
            if exc_info:
                exc = cast(Any, exc_info)
                LOGGER.error("Exception in handler bound to 'evt.EVT_C_FIND'")
                LOGGER.error("\nTraceback (most recent call last):\n"
                             + "".join(traceback.format_tb(exc[2]))
                             + f"{exc[0].__name__}: {exc[1]}")
                rsp_status: Any = 0xC311
                dataset: Any = None
            else:
                rsp_status, dataset = cast(tuple[Any, Any], result)
            if not self.assoc.is_established:
                return
            if type(rsp_status) is int and rsp_status in pending.codes \
                    and type(dataset) is bytes:
                if not pending.send(ii, rsp_status, dataset):
                    return
                continue
            rsp.Identifier = None
            rsp = self.validate_status(rsp_status, rsp)
            if rsp.Status not in self.statuses:
                self.dimse.send_msg(rsp, cx_id)         # unknown status
                return
            category, text = self.statuses[rsp.Status]
            if category == STATUS_PENDING:
                if isinstance(dataset, bytes):
                    data: bytes | None = dataset
                else:
                    data = encode(cast(Dataset, dataset), syntax.is_implicit_VR,
                                  syntax.is_little_endian, syntax.is_deflated)
                # A status Dataset may have set more than Status (an Error Comment).
                extra = rsp if isinstance(rsp_status, Dataset) else None
                if not pending.send(ii, int(rsp.Status), data or b"", extra):
                    return
                continue
            outcome = _OUTCOMES.get(category)
            if outcome is None:
                continue
            if category == STATUS_CANCEL:
                LOGGER.info("Received C-CANCEL-FIND RQ from peer")
            LOGGER.info(f"Find SCP Response {ii + 1}: 0x{rsp.Status:04X} "
                        f"({outcome.format(text)})")
            self.dimse.send_msg(rsp, cx_id)
            if category != STATUS_WARNING:      # a warning goes on, as upstream
                return
        if not self.assoc.is_established:
            return
        rsp.Identifier = None
        rsp.Status = 0x0000
        LOGGER.info(f"Find SCP Response {ii + 2}: 0x0000 (Success)")
        self.dimse.send_msg(rsp, cx_id)

    def is_cancelled(self, msg_id: int) -> bool:
        """Upstream's check of the C-CANCEL-RQs received, after reading what the peer has
        sent when the association thread runs the DUL itself (events transport,
        dicom/acceptor.py `InlineDUL.read_waiting`): the handler asks before each
        pending response (dicom/find.py `stream_pending`), so a C-CANCEL is read between
        responses without a thread reading the socket meanwhile (PS3.7 9.3.2.3).

        Upstream: the DUL's thread has read the C-CANCEL into `dimse.cancel_req`
        whenever it arrived. Upstream change that would remove this: the module
        docstring's, with a DUL the association thread can run (dicom/acceptor.py).
        """
        read_waiting = getattr(self.assoc.dul, "read_waiting", None)
        if read_waiting is not None:
            read_waiting()
        return super().is_cancelled(msg_id)


class _PendingSender:
    """Sends the pending responses of one C-FIND request."""

    codes = frozenset({0xFF00, 0xFF01})

    def __init__(self, scp: EncodedFind, rsp: C_FIND, cx_id: int) -> None:
        self.scp, self.rsp, self.cx_id = scp, rsp, cx_id
        self._commands: dict[int, bytes | None] = {}
        self._fast = hasattr(scp.dimse, "send_encoded")

    def send(self, ii: int, status: int, data: bytes, rsp: C_FIND | None = None) -> bool:
        """Send one pending response (upstream's 0xC312 for an empty identifier);
        False when the request is over. `rsp`: a primitive holding more than the
        request's own fields (an Error Comment from a status Dataset)."""
        dimse: Any = self.scp.dimse      # ResponseDIMSE on the events transport
        if not data:
            LOGGER.error("Failed encoding the response 'Identifier' dataset")
            out = rsp or self.rsp
            out.Status = 0xC312
            out.Identifier = None
            dimse.send_msg(out, self.cx_id)
            return False
        if LOGGER.isEnabledFor(logging.INFO):
            LOGGER.info(f"Find SCP Response {ii + 1}: 0x{status:04X} (Pending)")
        if _config.LOG_RESPONSE_IDENTIFIERS and LOGGER.isEnabledFor(logging.DEBUG):
            _log_response(data, self.scp.assoc, self.cx_id)
        command = self._command(status) if rsp is None and self._fast else None
        if command is not None and dimse.send_encoded(command, data, self.cx_id):
            return True
        out = rsp or self.rsp
        out.Status = status
        out.Identifier = BytesIO(data)
        dimse.send_msg(out, self.cx_id)
        out.Identifier = None
        return True

    def _command(self, status: int) -> bytes | None:
        """The pending command set with `status`, encoded once per request."""
        if status not in self._commands:
            template = C_FIND()
            template.MessageIDBeingRespondedTo = self.rsp.MessageIDBeingRespondedTo
            template.AffectedSOPClassUID = self.rsp.AffectedSOPClassUID
            template.Status = status
            template.Identifier = BytesIO(b"\0\0")
            self._commands[status] = encode_response(template)
        return self._commands[status]


def log_request(req: Any, syntax: Any, kind: str = "Find") -> None:
    """Upstream's log of a request's identifier ("Find", "Get", "Move" SCP)."""
    try:
        identifier = decode(cast(BytesIO, req.Identifier), syntax.is_implicit_VR,
                            syntax.is_little_endian, syntax.is_deflated)
        LOGGER.info(f"{kind} SCP Request Identifier:")
        LOGGER.info("")
        LOGGER.info("# DICOM Dataset")
        for line in pretty_dataset(identifier):
            LOGGER.info(line)
        LOGGER.info("")
    except Exception:
        pass            # as upstream: decoding failures are the handler's to answer


def _log_response(data: bytes, assoc: Association, cx_id: int) -> None:
    syntax = assoc._accepted_cx[cx_id].transfer_syntax[0]
    dataset = decode(BytesIO(data), syntax.is_implicit_VR, syntax.is_little_endian,
                     syntax.is_deflated)
    LOGGER.debug("Find SCP Response Identifier:")
    LOGGER.debug("")
    LOGGER.debug("# DICOM Dataset")
    for line in pretty_dataset(dataset):
        LOGGER.debug(line)
    LOGGER.debug("")


class QueryRetrieveFind(EncodedFind, QueryRetrieveServiceClass):
    """Q/R (Patient Root, Study Root, ...) C-FIND with encoded identifiers."""


class WorklistFind(EncodedFind, BasicWorklistManagementServiceClass):
    """Modality Worklist C-FIND with encoded identifiers."""


_FIND_CLASSES: dict[type, type] = {QueryRetrieveServiceClass: QueryRetrieveFind,
                                   BasicWorklistManagementServiceClass: WorklistFind}


def find_class(assoc: Association, msg: Any, context_id: int) -> type | None:
    """The `EncodedFind` class `serve_find` runs for `msg`, or None (not a C-FIND it
    serves: upstream's `_serve_request` handles it)."""
    if not isinstance(msg, C_FIND) or assoc._sent_release or not msg.is_valid_request \
            or context_id not in assoc._accepted_cx:
        return None
    return _FIND_CLASSES.get(service_class_of(assoc, msg))


def serve_find(assoc: Association, msg: Any, context_id: int) -> bool:
    """Serve a C-FIND request with `EncodedFind`, as upstream's `_serve_request` would
    with its service class; False (nothing done) for anything else.

    Upstream: `Association._serve_request` picks the service class with
    `uid_to_service_class` and runs its SCP; there is no way to pass it another class.
    Upstream change that would remove this: a service class registry on the AE.
    """
    scp_class = find_class(assoc, msg, context_id)
    if scp_class is None:
        return False
    context = assoc._accepted_cx[context_id]
    run_scp(assoc, lambda: scp_class(assoc).SCP(msg, context))
    return True


def service_class_of(assoc: Association, msg: Any) -> type:
    """The service class upstream's `_serve_request` picks for a DIMSE-C request (its
    Affected SOP Class, or the service class of SOP Class Common Extended Negotiation)."""
    uid = UID(str(msg.AffectedSOPClassUID))
    try:
        uid = assoc.acceptor.accepted_common_extended[uid][0]
    except KeyError:
        pass
    return cast(type, uid_to_service_class(uid))


def run_scp(assoc: Association, scp: Callable[[], None]) -> None:
    """Run an SCP as upstream's `_serve_request` runs the service class's: cancel
    requests cleared around it, the reactor paused (the SCP may call `send_*()`), an
    exception logged and the association aborted."""
    try:
        assoc.dimse.cancel_req = {}
        assoc._is_paused = True
        scp()
        assoc._is_paused = False
        assoc.dimse.cancel_req = {}
    except Exception as exc:
        ASSOC_LOGGER.exception(exc)
        assoc.abort()
