"""The C-GET and C-MOVE SCPs' sub-operation loop (PS3.4 C.4.2, C.4.3), events transport.

An override module of pynetdicom (with dicom/transport.py, reactor.py, find_scp.py,
store_send.py; pinned by tests/unit/test_transport_pins.py). pynetdicom's
`QueryRetrieveServiceClass._get_scp/_move_scp` run, per sub-operation: the yielded
status through `validate_status`, the C_GET/C_MOVE primitive's four count setters (each
validating), formatted log lines, and the pending response through the DIMSE provider,
which rebuilds its whole command set (`encode_response`) each time; ~12% of a
sub-operation's server CPU at ~1.1 ms (py-spy, docs/performance.md "Results: the
retrieve SCP loop"). Here `RetrieveSCP` runs the same loop with the pending responses
from a command set encoded once per request (dicom/pending.py's `PendingResponses`: only
the four counts change) sent as finished P-DATA-TF PDUs. Everything else is upstream's
behaviour, in the same order: the handler API (the C-GET count, the C-MOVE destination
then count), C-CANCEL between sub-operations, the Failure/Warning/Cancel/Success
statuses with the Failed SOP Instance UID List, 0xA702 when every sub-operation failed,
0xA801 for a destination that is unknown or does not associate, the Move Originator AE
Title and Message ID on each C-STORE-RQ, its log lines (at INFO, built only when INFO is
on), and the final responses through the primitive and the DIMSE provider. One
sub-operation is outstanding at a time: we negotiate no Asynchronous Operations Window
(PS3.7 D.3.3.3). Not as upstream: a C-MOVE sends a pending response at most every
`PENDING_INTERVAL_S` (dicom/pending.py; the first at once; PS3.4 C.4.2.3.1 makes them
optional), and its destination's DUL is run by this thread while it sends from archived
files (dicom/lent_dul.py).

Used from `PacsAssociation._serve_request` (`serve_retrieve`) on the event-driven
transport when nothing listens for the messages it skips building (`fast_allowed`);
the stock transport keeps upstream's SCPs.

Upstream change that would remove this module: pending C-GET/C-MOVE responses sent from
a command set encoded once per request, and counts kept outside the primitive.
"""

from __future__ import annotations

import logging
import traceback
from io import BytesIO
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import _config, evt
from pynetdicom._globals import (
    STATUS_CANCEL,
    STATUS_FAILURE,
    STATUS_PENDING,
    STATUS_SUCCESS,
    STATUS_WARNING,
)
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_GET, C_MOVE
from pynetdicom.dsutils import encode
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import LOGGER, QueryRetrieveServiceClass, attempt
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS

from pacs_server.dicom import lent_dul
from pacs_server.dicom.find_scp import log_request, run_scp, service_class_of
from pacs_server.dicom.pending import PendingPacer, PendingResponses
from pacs_server.dicom.store_send import (
    RawPData,
    RawSendStateMachine,
    RetrieveDimse,
    raw_send_allowed,
)


class RetrieveSCP(QueryRetrieveServiceClass):
    """`_get_scp`/`_move_scp` with pending responses from `PendingResponses`."""

    def _get_scp(self, req: C_GET, context: PresentationContext) -> None:
        """Upstream's C-GET SCP loop, pending responses from a template.

        Upstream: per sub-operation `validate_status`, four validating setters and the
        command set rebuilt (module docstring). Upstream change that would remove
        this: the module docstring's.
        """
        self._retrieve(req, context, None)

    def _move_scp(self, req: C_MOVE, context: PresentationContext) -> None:
        """Upstream's C-MOVE SCP loop, pending responses from a template.

        Upstream: as `_get_scp`, over the association to the destination. Upstream
        change that would remove this: the module docstring's.
        """
        self._retrieve(req, context, req)

    def _retrieve(self, req: C_GET | C_MOVE, context: PresentationContext,
                  move: C_MOVE | None) -> None:
        kind, base = ("Move", 0xC500) if move is not None else ("Get", 0xC400)
        event = evt.EVT_C_MOVE if move is not None else evt.EVT_C_GET
        cx_id = cast(int, context.context_id)
        rsp: Any = C_MOVE() if move is not None else C_GET()
        rsp.MessageID = req.MessageID
        rsp.MessageIDBeingRespondedTo = req.MessageID
        rsp.AffectedSOPClassUID = req.AffectedSOPClassUID
        if _config.LOG_REQUEST_IDENTIFIERS:
            log_request(req, context.transfer_syntax[0], kind)
        with attempt(rsp, self.dimse, cx_id, self.assoc) as ctx:
            ctx.error_msg = f"Exception in handler bound to 'evt.{event.name}'"
            ctx.error_status = base + 0x11
            generator = evt.trigger(ctx.assoc, event, {
                "request": req, "context": context.as_tuple,
                "_is_cancelled": self.is_cancelled})
        if not ctx.success or not self.assoc.is_established:
            return
        generator = cast(Any, generator)
        destination: Any = None
        if move is not None:
            with attempt(rsp, self.dimse, cx_id) as ctx:
                ctx.error_msg = ("The C-MOVE request handler must yield the (address, port) "
                                 "of the destination AE, then yield the number of "
                                 "sub-operations, then yield (status, dataset) pairs.")
                ctx.error_status = 0xC514
                destination = next(generator)
            if not ctx.success or not self.assoc.is_established:
                return
            with attempt(rsp, self.dimse, cx_id) as ctx:
                ctx.error_msg = _BAD_DESTINATION
                ctx.error_status = 0xC515
                if None in destination[:2]:
                    LOGGER.error(f"Unknown Move Destination: {move.MoveDestination}")
                    rsp.Status = 0xA801
                    self.dimse.send_msg(rsp, cx_id)
                    return
            if not ctx.success:
                return
        with attempt(rsp, self.dimse, cx_id) as ctx:
            ctx.error_msg = (f"The C-{kind.upper()} request handler yielded an invalid "
                             "number of sub-operations value")
            ctx.error_status = base + 0x13
            total = int(next(generator))
        if not ctx.success or (move is not None and not self.assoc.is_established):
            return
        if total < 1:
            rsp.Status = 0x0000
            _set_counts(rsp, None, 0, 0, 0)
            self.dimse.send_msg(rsp, cx_id)
            return
        if total > 65535:
            LOGGER.error(f"The C-{kind.upper()} request handler yielded more than 65535 "
                         "matches")
            rsp.Status = base + 0x16
            self.dimse.send_msg(rsp, cx_id)
            return
        sender: Association = self.assoc
        if move is not None:
            with attempt(rsp, self.dimse, cx_id) as ctx:
                ctx.error_msg = _BAD_DESTINATION
                ctx.error_status = 0xC515
                kwargs = {"ae_title": move.MoveDestination}
                if len(destination) >= 3 and destination[2]:
                    kwargs.update(destination[2])
                sender = self.ae.associate(destination[0], destination[1],
                                           **kwargs)  # type: ignore[arg-type]
            if not ctx.success:
                return
            if not sender.is_established:
                LOGGER.error("Move SCP: Unable to associate with destination AE")
                rsp.Status = 0xA801
                self.dimse.send_msg(rsp, cx_id)
                sender.dul.socket.close()  # type: ignore[union-attr]
                return
        _Loop(self, req, context, rsp, sender, move, total).run(generator)


_BAD_DESTINATION = ("The handler bound to 'evt.EVT_C_MOVE' yielded an invalid destination "
                    "AE (addr, port) or (addr, port, kwargs) value")


def _set_counts(rsp: Any, remaining: int | None, completed: int, failed: int,
                warning: int) -> None:
    if remaining is not None:
        rsp.NumberOfRemainingSuboperations = remaining
    rsp.NumberOfFailedSuboperations = failed
    rsp.NumberOfWarningSuboperations = warning
    rsp.NumberOfCompletedSuboperations = completed


class _Loop:
    """One request's sub-operations: upstream's loop body, counts kept here."""

    def __init__(self, scp: RetrieveSCP, req: Any, context: PresentationContext, rsp: Any,
                 sender: Association, move: C_MOVE | None, total: int) -> None:
        self.scp, self.req, self.rsp, self.sender, self.move = scp, req, rsp, sender, move
        self.kind = "Move" if move is not None else "Get"
        self.cx_id = cast(int, context.context_id)
        self.syntax = context.transfer_syntax[0]
        self.total = total
        self.remaining, self.failed, self.warning, self.completed = total, 0, 0, 0
        self.failed_uids: list[str] = []
        assoc = scp.assoc
        self.pending: PendingResponses | None = None
        if raw_send_allowed(assoc):
            self.pending = PendingResponses(rsp, self.cx_id, assoc.dimse.maximum_pdu_size)
        # dicom/file_sending.py's FileSending holds them (not upstream's classes).
        self.ahead = move is None and self.pending is not None \
            and hasattr(assoc, "flush_ahead")
        # Whether the primitive holds the counts of the last pending response (None
        # sent yet: nothing to hold).
        self.synced = True
        # C-MOVE: pending responses at most one per PENDING_INTERVAL_S (dicom/pending.py).
        self.pacer = PendingPacer() if move is not None else None
        self.originator: dict[str, Any] = {}
        if move is not None:
            self.originator = {"originator_aet": scp.ae.ae_title,
                               "originator_id": move.MessageID}

    def run(self, generator: Any) -> None:
        try:
            self._run(generator)
        finally:
            # A C-MOVE destination's DUL held by this thread (dicom/lent_dul.py).
            lent_dul.give_back(self.sender)

    def _run(self, generator: Any) -> None:
        scp, rsp = self.scp, self.rsp
        assoc = scp.assoc
        ii = -1
        for ii, (result, exc) in enumerate(scp._wrap_handler(generator)):
            if exc:
                LOGGER.error(f"Exception in handler bound to 'evt.EVT_C_{self.kind.upper()}'")
                LOGGER.error("\nTraceback (most recent call last):\n"
                             + "".join(traceback.format_tb(exc[2]))
                             + f"{exc[0].__name__}: {exc[1]}")  # type: ignore[union-attr]
                status: Any = 0xC511 if self.move is not None else 0xC411
                dataset: Any = None
            else:
                status, dataset = result  # type: ignore[misc]
            if not assoc.is_established:
                self._release()
                return
            if self.remaining <= 0:
                LOGGER.warning(f"The C-{self.kind.upper()} handler yielded further (status, "
                               "dataset) results but these will be ignored as the "
                               "sub-operations are complete")
                break
            if type(status) is int and status == 0xFF00:
                if dataset:
                    self._suboperation(ii, dataset)
                continue
            if self._other(ii, status, dataset):
                return
        self._release()
        if not assoc.is_established:
            return
        self._sync()
        if not self.failed and not self.warning:
            LOGGER.info(f"{self.kind} SCP Response {ii + 2}: 0x0000 (Success)")
            rsp.Status = 0x0000
            rsp.Identifier = None
        else:
            if self.total == self.failed:
                LOGGER.info(f"{self.kind} SCP Response {ii + 2}: 0xA702 (Failure)")
                rsp.Status = 0xA702
            else:
                LOGGER.info(f"{self.kind} SCP Response {ii + 2}: 0xB000 (Warning)")
                rsp.Status = 0xB000
            rsp.Identifier = self._failed_list(None)
        self._final()

    def _suboperation(self, ii: int, dataset: Any) -> None:
        """Send one instance (upstream's pending branch), then the pending response."""
        if not isinstance(dataset, Dataset):
            LOGGER.error("Received invalid dataset from callback")
            self.failed += 1
            self.failed_uids.append("")
            self._send_pending()
            return
        if LOGGER.isEnabledFor(logging.INFO):
            LOGGER.info(f"{self.kind} SCP Response {ii + 1}: 0xFF00 (Pending)")
        try:
            msg_id = int(self.req.MessageID) + ii + 1
            if msg_id > 65535:
                msg_id -= 65535
            code: int | None = self.sender.send_c_store(dataset, msg_id=msg_id,
                                                        **self.originator).Status
            category = STORAGE_SERVICE_CLASS_STATUS[cast(int, code)][0]
        except Exception as exc:
            LOGGER.warning("C-STORE sub-operation failed.")
            LOGGER.error(str(exc))
            code, category = None, STATUS_FAILURE
        if LOGGER.isEnabledFor(logging.INFO):
            shown = f" 0x{code:04X}" if code is not None else ""
            LOGGER.info(f"{self.kind} SCP: Received Store SCP response{shown} ({category})")
        if category == STATUS_FAILURE:
            self.failed += 1
            if hasattr(dataset, "SOPInstanceUID"):
                self.failed_uids.append(dataset.SOPInstanceUID)
        elif category == STATUS_WARNING:
            self.warning += 1
        elif category == STATUS_SUCCESS:
            self.completed += 1
        self.remaining -= 1
        self._send_pending()

    def _send_pending(self) -> None:
        self.synced = False
        if self.pacer is not None and not self.pacer.due():
            return      # the counts go out with the next pending or the final response
        if self.pending is not None:
            pdus = self.pending.pdus(self.remaining, self.completed, self.failed,
                                     self.warning)
            if self.ahead:
                # C-GET: it goes out with the next C-STORE-RQ, one hand-off to the DUL
                # thread and one write instead of two; the order on the wire is the same.
                assoc: Any = self.scp.assoc
                assoc.send_ahead += pdus
            else:
                self.scp.dimse.dul.send_pdu(RawPData(pdus))
            return
        rsp = self.rsp
        rsp.Identifier = None
        self._sync()
        self._flush()
        self.scp.dimse.send_msg(rsp, self.cx_id)

    def _sync(self) -> None:
        """Give the primitive the counts of the last pending response: upstream's
        primitive, reused for every response, carries them into the final one."""
        if not self.synced:
            _set_counts(self.rsp, self.remaining, self.completed, self.failed, self.warning)
            self.synced = True

    def _other(self, ii: int, status: Any, dataset: Any) -> bool:
        """Any other yielded status, as upstream; True when the request is over."""
        scp, rsp = self.scp, self.rsp
        self._flush()
        rsp.Identifier = None
        self._sync()
        rsp = scp.validate_status(status, rsp)
        known = scp.statuses.get(rsp.Status)
        if known is None:
            self._release()
            scp.dimse.send_msg(rsp, self.cx_id)
            return True
        category = known[0]
        if category == STATUS_PENDING:
            if dataset:     # a status Dataset with Pending: upstream's primitive path
                if not isinstance(dataset, Dataset):
                    LOGGER.error("Received invalid dataset from callback")
                    self.failed += 1
                    self.failed_uids.append("")
                    self._send_pending()
                else:
                    saved, self.pending = self.pending, None
                    try:
                        self._suboperation(ii, dataset)
                    finally:
                        self.pending = saved
            return False
        self._release()
        if category == STATUS_CANCEL:
            LOGGER.info(f"Received C-CANCEL-{self.kind.upper()} RQ from peer")
            LOGGER.info(f"{self.kind} SCP Response {ii + 1}: 0x{rsp.Status:04X} (Cancel)")
            rsp.NumberOfRemainingSuboperations = self.remaining
            rsp.Identifier = self._failed_list(dataset)
        elif category in (STATUS_FAILURE, STATUS_WARNING):
            word = "Response" if self.move is not None else "Result"
            LOGGER.info(f"{self.kind} SCP {word} {ii + 1}: 0x{rsp.Status:04X} "
                        f"({category} - {known[1]})")
            rsp.Identifier = self._failed_list(dataset)
            self.failed += self.remaining
        elif category == STATUS_SUCCESS:
            if self.failed or self.warning:
                LOGGER.info(f"{self.kind} SCP Response {ii + 1}: 0xB000 (Warning)")
                rsp.Status = 0xB000
                rsp.Identifier = self._failed_list(None)
            else:
                LOGGER.info(f"{self.kind} SCP Response {ii + 1}: 0x0000 (Success)")
                rsp.Identifier = None
        else:
            return False
        self._final()
        return True

    def _final(self) -> None:
        _set_counts(self.rsp, None, self.completed, self.failed, self.warning)
        self._flush()
        self.scp.dimse.send_msg(self.rsp, self.cx_id)

    def _flush(self) -> None:
        """Send what waits for a next C-STORE-RQ before any other response."""
        if self.ahead:
            cast(Any, self.scp.assoc).flush_ahead()

    def _failed_list(self, dataset: Any) -> BytesIO:
        if not isinstance(dataset, Dataset) or "FailedSOPInstanceUIDList" not in dataset:
            dataset = Dataset()
            dataset.FailedSOPInstanceUIDList = self.failed_uids
        syntax = self.syntax
        return BytesIO(cast(bytes, encode(dataset, syntax.is_implicit_VR,
                                          syntax.is_little_endian, syntax.is_deflated)))

    def _release(self) -> None:
        if self.move is not None and self.sender.is_established:
            self.sender.release()


def fast_allowed(assoc: Association) -> bool:
    """Whether `RetrieveSCP` may run: the event-driven transport's raw send and
    `RetrieveDimse` on this association."""
    return isinstance(assoc.dul.state_machine, RawSendStateMachine) \
        and isinstance(assoc.dimse, RetrieveDimse)


def serve_retrieve(assoc: Association, msg: Any, context_id: int) -> bool:
    """Serve a C-GET or C-MOVE request with `RetrieveSCP`, as upstream's
    `_serve_request` would with `QueryRetrieveServiceClass`; False (nothing done) for
    anything else or on the stock transport.

    Upstream: `Association._serve_request` picks the service class with
    `uid_to_service_class`; there is no way to pass it another class. Upstream change
    that would remove this: a service class registry on the AE.
    """
    if not isinstance(msg, (C_GET, C_MOVE)) or assoc._sent_release \
            or not msg.is_valid_request or not fast_allowed(assoc):
        return False
    context = assoc._accepted_cx.get(context_id)
    if context is None or service_class_of(assoc, msg) is not QueryRetrieveServiceClass \
            or context.abstract_syntax == _WITHOUT_BULK_DATA:
        return False
    run_scp(assoc, lambda: RetrieveSCP(assoc).SCP(msg, context))
    return True


# Composite Instance Retrieve Without Bulk Data (PS3.4 Z): upstream's C-GET strips the
# bulk data of each yielded Dataset; we do not offer it, and upstream's SCP keeps it.
_WITHOUT_BULK_DATA = "1.2.840.10008.5.1.4.1.2.5.3"
