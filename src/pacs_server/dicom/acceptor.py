"""The acceptor's association on the event-driven transport, built once.

The fourth module of overrides of pynetdicom (with dicom/transport.py, dicom/reactor.py
and dicom/negotiation.py; pinned by tests/unit/test_transport_pins.py).

Upstream `Association.__init__` builds a `DULServiceProvider` and a
`DIMSEServiceProvider` by name, then binds its default handlers one `bind()` at a time;
the request handler then binds the server's handlers the same way. The event-driven
transport (dicom/reactor.py) then threw the DUL away for an `EventDUL`, replaced the
queues of both with waking ones, and dicom/transport.py replaced the send queue again
with a bounded one: per C-ECHO association ~0.3 ms of CPU (the request thread's
`EventPacsAssociation.__init__` was 0.55 of its 0.82 ms, half of it the second DUL;
`Condition.__init__`, four per queue, was the largest single function,
docs/performance.md "Results: the CPU of one association"). Here each piece is built
once, with its final class and queues, and the handler table is copied from one built
per listener.

One thread while it only echoes, stores or finds: an association's DUL thread is
started only when it is needed (`InlineDUL`, `InlineAcceptor`). Until the first request
other than a C-ECHO, C-STORE or C-FIND, the association thread runs the DUL's reactor
itself, as it already did for the A-ASSOCIATE-RQ (`EventDUL.read_request`): it reads
the P-DATA PDUs (a data set straight into its receive file, dicom/receive.py), serves
the request (dicom/storage_scp.py, dicom/find_scp.py) and writes the response PDUs;
between a C-FIND's pending responses it reads what the peer has sent, a C-CANCEL-RQ
(`InlineDUL.read_waiting`). A storescu or modality association, a findscu or worklist
query, an echoscu, a monitoring probe are served and released by one thread instead of
two, with no hand-off between them for each request, response and release. A
C-GET/C-MOVE/N-* request, a request while the peer may have several outstanding, a
`send_*()` or an abort from another thread start the DUL's thread (`hand_over`,
`take_over`).

Upstream change that would remove this module: `dul_class` / `dimse_class` attributes
on `Association` (and a handler table an association can start from); for the single
thread, a DUL that the association thread can run until a service needs it to read on
its own.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import structlog
from pynetdicom import _config, evt
from pynetdicom._globals import MODE_ACCEPTOR, MODE_REQUESTOR
from pynetdicom._handlers import (
    standard_dimse_recv_handler,
    standard_dimse_sent_handler,
    standard_pdu_recv_handler,
    standard_pdu_sent_handler,
)
from pynetdicom.acse import ACSE
from pynetdicom.association import ServiceUser
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_STORE
from pynetdicom.utils import make_target

from pacs_server.dicom.command_set import command_elements
from pacs_server.dicom.find_scp import find_class
from pacs_server.dicom.reactor import (
    _MAX_WAIT_S,
    EventDUL,
    EventReactors,
    ResponseDIMSE,
    WakingQueue,
)
from pacs_server.dicom.store_send import raw_receive_allowed
from pacs_server.dicom.waiting import LightEvent

Handlers = dict[Any, Any]

log = structlog.get_logger(__name__)

# Most DUL events acted on per `InlineDUL.read_waiting` (a PDU read is one): a peer that
# keeps sending does not hold a C-FIND's responses up; the rest is read at the next call.
_READ_STEPS = 16


def handler_table(bound: dict[Any, list[tuple[Any, Any]]]) -> Handlers:
    """What `Association._bind_defaults()` and then binding `bound` (the server's
    handlers, as the request handler binds them) leave in `Association._handlers`."""
    table: Handlers = {}
    for event in evt._INTERVENTION_EVENTS:
        evt._add_handler(event, table, (evt.get_default_handler(event), None))
    if _config.LOG_HANDLER_LEVEL == "standard":     # dicom/runtime.py sets "none"
        for event, standard in ((evt.EVT_DIMSE_RECV, standard_dimse_recv_handler),
                                (evt.EVT_DIMSE_SENT, standard_dimse_sent_handler),
                                (evt.EVT_PDU_RECV, standard_pdu_recv_handler),
                                (evt.EVT_PDU_SENT, standard_pdu_sent_handler)):
            evt._add_handler(event, table, (standard, None))
    for event, handlers in bound.items():
        if event.is_intervention and handlers:
            # (handler, args) pairs
            evt._add_handler(event, table, tuple(handlers))  # type: ignore[arg-type]
        elif isinstance(event, evt.NotificationEvent):
            for handler in handlers:
                evt._add_handler(event, table, (handler[0], handler[1]))
    return table


def copy_handlers(table: Handlers) -> Handlers:
    """An association's own handler table (its notification lists are its own, so a
    later `bind()` or `unbind()` changes only this association)."""
    return {event: list(h) if isinstance(h, list) else h for event, h in table.items()}


# One ServiceUser per (mode, Implementation Class UID), built by upstream's __init__
# and copied for each association: the UID setter validates the UID (pydicom's regex,
# twice) for every one, 17 µs of a pair's 34 (docs/performance.md).
_service_users: dict[tuple[str, str], ServiceUser] = {}


def service_user(assoc: Any, mode: str) -> ServiceUser:
    """`ServiceUser(assoc, mode)`, copied from one built for the same mode and AE's
    Implementation Class UID: every container of its own, the user information items
    (maximum length, implementation class UID) copies of the template's."""
    uid = assoc.ae.implementation_class_uid
    template = _service_users.get((mode, uid))
    if template is None:
        template = ServiceUser(assoc, mode)
        template.assoc = None  # type: ignore[assignment]  # keeps no association alive
        _service_users[(mode, uid)] = template
    user = object.__new__(ServiceUser)
    fields = dict(template.__dict__)
    fields["assoc"] = assoc
    fields["_contexts"] = []
    fields["_user_info"] = [_copied(item) for item in template._user_info]
    fields["_ext_neg"] = {kind: [] for kind in template._ext_neg}
    fields["_common_ext"] = {}
    user.__dict__.update(fields)
    return user


def _copied(item: Any) -> Any:
    new = object.__new__(type(item))
    new.__dict__.update(item.__dict__)
    return new


def init_event_association(assoc: EventReactors, ae: Any, handlers: Handlers,
                           send_queue: Callable[..., WakingQueue],
                           state_machine: type) -> None:
    """Upstream `Association.__init__(ae, "acceptor")`, with the event-driven DUL,
    DIMSE provider and queues built directly, and the bound handlers copied.

    Sets every attribute upstream's sets (the pin tests/unit/test_transport_pins.py
    holds on `Association.__init__` says when that changes), then what
    `EventReactors.install_event_reactors()` adds. `send_queue(dul, on_put)` builds the
    DUL's send queue (file_sending.BoundedSendQueue), `state_machine(dul)` its state
    machine (transport.GuardedStateMachine).
    """
    # Already its connection's running thread (dicom/connection.py): not again.
    own_thread = threading.current_thread() is assoc
    assoc._ae = ae
    assoc.mode = MODE_ACCEPTOR
    if not own_thread:
        assoc._server = None
    assoc.requestor = service_user(assoc, MODE_REQUESTOR)
    assoc.acceptor = service_user(assoc, MODE_ACCEPTOR)
    assoc.is_established = False
    assoc.is_rejected = False
    assoc.is_aborted = False
    assoc.is_released = False
    assoc._sent_abort = False
    assoc._sent_release = False
    assoc._accepted_cx = {}
    assoc._rejected_cx = []
    # install_event_reactors' pieces, needed by the DUL and the DIMSE queue below.
    assoc._wake = LightEvent()
    assoc._pause = threading.Condition()
    assoc.acse = ACSE(assoc)
    dul = InlineDUL(assoc, assoc._wake.set, send_queue, state_machine)
    assoc.dul = dul
    dimse = ResponseDIMSE(assoc, WakingQueue(assoc._wake.set))
    assoc.dimse = dimse
    # Upstream's timeout setters (acse_timeout also sets the ARTIM timer's).
    assoc.acse_timeout = ae.acse_timeout
    assoc.connection_timeout = ae.connection_timeout
    assoc.dimse_timeout = ae.dimse_timeout
    assoc.network_timeout = ae.network_timeout
    assoc.network_timeout_response = "A-ABORT"
    assoc._handlers = copy_handlers(handlers)
    assoc._kill = False
    assoc._started_dul = False
    assoc._dul_ready = LightEvent()
    assoc._reactor_checkpoint = LightEvent()
    assoc._reactor_checkpoint.set()
    assoc._is_paused = False
    assoc._timer_resolution = _config.WINDOWS_TIMER_RESOLUTION
    if not own_thread:
        threading.Thread.__init__(assoc, target=make_target(assoc.run_reactor))
        assoc.daemon = True


class InlineDUL(EventDUL):
    """The acceptor's event-driven DUL, run by the association thread until a request
    needs the DUL's own thread (`hand_over`), which is started only then.

    The state machine runs in one thread at a time: while `_inline` only a thread
    holding `_inline_lock` steps it (the association thread, while it runs the reactor
    or waits on the socket; not while a handler runs), and `hand_over` takes the lock.
    Other threads only queue (which wakes the holder) or hand over.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._inline_lock = threading.RLock()

    def _start_for_request(self) -> None:
        """Not started for the set-up: at `hand_over`, if ever."""

    def _wake_reactor(self) -> None:
        # The association thread running the reactor puts an event per PDU read and
        # per primitive sent, and steps again before it waits: no self-pipe write (and
        # poll, read) for its own puts. A put just before a hand-over is in the queue
        # before this check, and the DUL's thread steps before its first wait.
        if self._inline and threading.current_thread() is self._assoc:
            return
        super()._wake_reactor()

    def read_request(self, deadline: float) -> bool:
        with self._inline_lock:
            return super().read_request(deadline)

    def _after_inline_send(self) -> None:
        """Send what was queued (the A-ASSOCIATE-AC, a response, the A-RELEASE-RP) and
        stay with the association thread (unless another thread took the reactor)."""
        with self._inline_lock:
            while self._inline and self.to_provider_queue.qsize() and not self._kill_thread:
                self._step()

    def hand_over(self) -> None:
        """The DUL's own thread takes over, started now: from the association thread,
        or from another thread that needs the DUL while the association thread is busy
        in a handler (`take_over`)."""
        with self._inline_lock:
            if not self._inline:
                return
            self._hand_over()
            if self.ident is None and not self._kill_thread:
                self.start()
        with self._changed:
            self._changed.notify_all()

    def take_over(self, timeout: float) -> None:
        """From another thread (an abort): hand the reactor to the DUL's own thread as
        soon as the association thread is not stepping it. This may wait up to
        `timeout` (the association thread finishing in Sta13 holds the lock up to
        `_MAX_WAIT_S`), so callers on the event loop run it in a thread (control.py,
        workers/worker.py)."""
        if self._inline_lock.acquire(timeout=timeout):
            try:
                self.hand_over()
            finally:
                self._inline_lock.release()
        else:
            log.warning("association.take_over_timeout", seconds=timeout,
                        state=self.state_machine.current_state)

    def run_until_request(self, assoc: InlineAcceptor) -> None:
        """Run the reactor in the association thread until there is something for the
        association's reactor: a DIMSE message, an A-RELEASE/A-ABORT, the idle timeout,
        a `send_*()` from another thread (its checkpoint cleared), or the end."""
        timer = self._idle_timer
        if timer._start_time is None:
            timer.start()        # what run_reactor does when the DUL's thread starts
        messages = assoc.dimse.msg_queue
        checkpoint = assoc._reactor_checkpoint
        with self._inline_lock:
            while self._inline and not self._kill_thread and not assoc._kill:
                if messages.qsize() or self.to_user_queue.qsize() or timer.expired \
                        or not checkpoint.is_set():
                    return
                if not self._step():
                    self._wait(_MAX_WAIT_S if timer.timeout is None
                               else max(0.0, timer.remaining))

    def read_waiting(self) -> None:
        """In the association thread while it runs the DUL, during a request it serves
        (a C-FIND between pending responses): act on what the peer has already sent (a
        C-CANCEL-RQ into `dimse.cancel_req`, an A-ABORT, the connection closed), at most
        `_READ_STEPS` events, without waiting for more. Elsewhere nothing: the DUL's
        thread reads as it arrives."""
        if not self._inline or threading.current_thread() is not self._assoc:
            return
        with self._inline_lock:
            for _ in range(_READ_STEPS):
                if not self._inline or self._kill_thread or not self._step():
                    return

    def finish_inline(self) -> None:
        """At the association's end, in its thread: run the reactor until the state
        machine is back in Sta1 (what is queued sent, the connection closed; Sta13 closes
        it when the peer has not), or hand it to its own thread after `_MAX_WAIT_S`."""
        deadline = time.monotonic() + _MAX_WAIT_S
        with self._inline_lock:
            while self._inline and not self._kill_thread \
                    and self.state_machine.current_state != "Sta1":
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.hand_over()
                    return
                if not self._step():
                    self._wait(remaining)
            if not self._inline:
                return
            self._inline = False
        with self._changed:
            self._changed.notify_all()

    def close_unstarted(self) -> None:
        """The association has ended: if the DUL's thread never ran, what its end would
        have done (the self-pipe closed, waiters woken)."""
        with self._inline_lock:
            if self.ident is not None:
                return
            self._inline = False
            self._kill_thread = True
            self._wakeup.close()
        with self._changed:
            self._changed.notify_all()


class InlineAcceptor(EventReactors):
    """The association thread's side of `InlineDUL` (a mixin before `PacsAssociation`).

    Upstream runs every acceptor association in two threads from the start (plus the
    request handler's): each request, response and release is a hand-off between
    them, a scheduler wake-up each way. Per C-ECHO association (strace) that was 140
    futex calls and 3 thread starts, now 64 and 2; server CPU 4.56 -> 4.24 ms in an
    interleaved A/B (docs/performance.md). The same for a storescu association: its
    C-STORE-RQs are read, served and answered by this thread (`_serve_request`), and
    for a findscu or worklist association: its C-FIND-RQ and C-CANCEL-RQ.
    Upstream change that would remove this: see the module docstring.
    """

    # None until the first C-STORE or C-FIND: whether the peer may have one request
    # outstanding only (then those are served without the DUL thread).
    _one_request: bool | None = None

    def _run_reactor(self) -> None:
        """`EventReactors._run_reactor`, preceded by the inline phase: the DUL run here
        until a request that needs the DUL's thread (`_serve_request`) or a `send_*()`
        from another thread."""
        dul = cast(InlineDUL, self.dul)
        try:
            while dul._inline and not self._kill:
                with self._pause:
                    if not self._reactor_checkpoint.is_set():
                        dul.hand_over()
                        break
                    self._paused = False
                if self._reactor_step():
                    return
                if not dul._inline:
                    break
                self._is_paused = True      # only the DUL's work runs meanwhile
                dul.run_until_request(self)
            if not self._kill:
                super()._run_reactor()
        finally:
            if dul._inline:
                dul.finish_inline()
            self.wait_dul_done()        # finish_inline may have handed over

    def _serve_request(self, msg: Any, context_id: int) -> None:
        """Serve a C-ECHO, C-STORE or C-FIND in this thread, with the DUL run inline;
        any other request first hands the DUL to its own thread.

        A C-STORE handler waits on the event loop, and meanwhile nothing reads the
        socket: a storescu or modality sends nothing before the response (no
        asynchronous operations window, PS3.7 D.3.3.3), and an A-ABORT or A-RELEASE-RQ
        sent meanwhile is read once the response is queued, as the DUL's thread would
        have read it after sending that response. A C-FIND (dicom/find_scp.py's SCP,
        Q/R and Modality Worklist) is the same, except that its peer may send a
        C-CANCEL-RQ while the responses go out (PS3.7 9.3.2.3): the handler asks for
        it before each pending response, and `EncodedFind.is_cancelled` first reads
        what has arrived (`InlineDUL.read_waiting`), so a C-CANCEL is honoured between
        responses, not while the handler waits on the index for the next batch. A
        C-GET or C-MOVE sends sub-operations and waits for their responses while its
        handler runs, and the N-* services are upstream's: the DUL reads on its own
        thread.
        """
        if not self._served_inline(msg, context_id):
            cast(InlineDUL, self.dul).hand_over()
        super()._serve_request(msg, context_id)

    def _served_inline(self, msg: Any, context_id: int) -> bool:
        kind = msg.__class__
        if kind is C_ECHO:
            return True
        if kind is C_STORE:
            return self._one_at_a_time()
        return kind is C_FIND and self._one_at_a_time() \
            and find_class(self, msg, context_id) is not None

    def _one_at_a_time(self) -> bool:
        # An asynchronous operations window above one (PS3.7 D.3.3.3) lets the peer send
        # the next request before the response: the DUL's thread reads it meanwhile.
        if self._one_request is None:
            self._one_request = self.acceptor.asynchronous_operations == (1, 1)
        return self._one_request

    def _dul_running(self) -> bool:
        dul = cast(InlineDUL, self.dul)
        return dul.is_alive() or (dul._inline and not dul._kill_thread)

    def kill(self) -> None:
        """`EventReactors.kill`, with the inline DUL finished first: here, or, from
        another thread, by the DUL's own thread once the association thread is not
        stepping it (`InlineDUL.take_over`)."""
        dul = cast(InlineDUL, self.dul)
        if dul._inline:
            self._kill = True
            if threading.current_thread() is self:
                dul.finish_inline()
            else:
                self._wake.set()
                dul._wakeup.set()
                dul.take_over(2 * _MAX_WAIT_S)
        super().kill()

    def run_reactor(self) -> None:
        try:
            super().run_reactor()
        finally:
            cast(InlineDUL, self.dul).close_unstarted()


_C_ECHO_RQ = 0x0030
_NO_DATA_SET = 0x0101
# Group length, Affected SOP Class UID, Command Field, Message ID, Command Data Set Type.
_ECHO_ELEMENTS = {0x0000: 4, 0x0002: 0, 0x0100: 2, 0x0110: 2, 0x0800: 2}


def echo_request(command: bytes) -> C_ECHO | None:
    """The C-ECHO-RQ primitive of a command set (PS3.7 9.3.5.1: Implicit VR Little
    Endian, group 0000), or None for anything else or anything unusual (upstream then
    decodes it, and reports what is wrong)."""
    values = command_elements(command, _ECHO_ELEMENTS)
    if values is None:
        return None
    field, data_set, msg_id = (values.get(e, b"") for e in (0x0100, 0x0800, 0x0110))
    uid = values.get(0x0002, b"").rstrip(b"\0 ")
    if len(field) != 2 or len(data_set) != 2 or len(msg_id) != 2 or not uid \
            or struct.unpack("<H", field)[0] != _C_ECHO_RQ \
            or struct.unpack("<H", data_set)[0] != _NO_DATA_SET:
        return None
    try:
        request = C_ECHO()
        request.MessageID = struct.unpack("<H", msg_id)[0]
        request.AffectedSOPClassUID = uid.decode("ascii")
    except (ValueError, TypeError, UnicodeDecodeError):
        return None
    return request


class EchoDimse(DIMSEServiceProvider):
    """The acceptor's DIMSE provider, decoding a C-ECHO-RQ without pydicom (a mixin
    placed first)."""

    def receive_primitive(self, primitive: Any) -> None:
        """Upstream's, except for a C-ECHO-RQ in one P-DATA fragment.

        Upstream: every message through `DIMSEMessage.decode_msg` (pydicom decodes the
        command set into a Dataset) and `message_to_primitive` (each element through
        the primitive's validating setters) for a command set of five fixed elements:
        with it the association thread's CPU per C-ECHO association was 1.52 ms, 1.24
        without (docs/performance.md). As for a C-STORE-RSP
        (dicom/store_send.py), EVT_DIMSE_RECV with the message object is skipped only
        when nothing but pynetdicom's own logging handler would get it.
        Upstream change that removes this: a command set decoder without pydicom.
        """
        pdvs = getattr(primitive, "presentation_data_value_list", None)
        if self.message is None and pdvs and len(pdvs) == 1:
            context_id, data = pdvs[0]
            if data[:1] == b"\x03" and raw_receive_allowed(self.assoc):
                request = echo_request(bytes(data[1:]))
                if request is not None:
                    request._context_id = context_id
                    self.msg_queue.put((context_id, request))
                    return
        super().receive_primitive(primitive)
