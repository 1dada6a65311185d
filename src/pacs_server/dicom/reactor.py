"""The event-driven transport (`server.transport: events`): pynetdicom's two reactors,
waiting on the socket and on their queues instead of sleeping.

The second module of overrides of pynetdicom (with dicom/transport.py; both are pinned
by tests/unit/test_transport_pins.py). pynetdicom 3.0 runs each association in two
threads that poll:

- the DUL thread (`DULServiceProvider.run_reactor`) checks its send queue and the
  socket (`select` with timeout 0) and sleeps 1 ms whenever neither had anything;
- the association thread (`Association._run_reactor`) sleeps 1 ms, then looks at the
  DIMSE and ACSE queues, every millisecond for the life of the association;
- the `send_*()` methods wait for the association thread to pause by sleeping 0.1 ms
  in a loop, `kill()` waits for the DUL by sleeping 10 ms in a loop.

So a request waits for up to three polls (read, handle, send), and an idle association
costs ~1.8 % of a core (50 idle associations: 90-139 % of a core; Orthanc 0.1-0.2 %).
Here the DUL thread blocks in `poll()` on the socket and on a self-pipe that is written
when something is put on its queues; the association thread blocks on an Event set when
a DIMSE message, an ACSE primitive or the end of the DUL arrives; pausing and stopping
wait on conditions. What each state machine action does is upstream's, unchanged.

Upstream change that would remove this module: event-driven reactors in pynetdicom
(its own `TODO: try and make this event based` in `DULServiceProvider.__init__`).
"""

from __future__ import annotations

import copy
import logging
import os
import queue
import select
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, cast

from pynetdicom import evt
from pynetdicom._handlers import standard_dimse_sent_handler
from pynetdicom.association import LOGGER, Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_ECHO_RSP, C_FIND_RSP, C_GET_RSP, C_MOVE_RSP, C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_GET, C_MOVE, C_STORE
from pynetdicom.fsm import StateMachine
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, P_DATA
from pynetdicom.timer import Timer
from pynetdicom.transport import AssociationSocket
from pynetdicom.utils import make_target

from pacs_server.dicom.closing import AwaitingCloseDUL
from pacs_server.dicom.negotiation import ByProposal, encode_accept
from pacs_server.dicom.receive import read_pdata
from pacs_server.dicom.waiting import LightEvent, LightQueue

# Longest a reactor blocks without looking again, even with nothing to wait for: a
# safety net for a wake-up that no put() announces (none is known), not a poll.
_MAX_WAIT_S = 2.0


class Wakeup:
    """A self-pipe: `set()` from any thread makes `fileno()` readable until `clear()`."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self._lock = threading.Lock()
        self._armed = False
        self._closed = False

    def fileno(self) -> int:
        return self._r

    def set(self) -> None:
        with self._lock:
            # Closed: the fd number may already belong to someone else.
            if self._armed or self._closed:
                return
            self._armed = True
            os.write(self._w, b"\0")

    def clear(self) -> None:
        with self._lock:
            if self._armed and not self._closed:
                try:
                    os.read(self._r, 64)
                except BlockingIOError:
                    pass
                self._armed = False

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self._r)
                os.close(self._w)

    def __del__(self) -> None:
        # A DUL never started leaves its pipe to this (weakref.finalize on the DUL cost
        # 0.07 ms of CPU per association, docs/performance.md).
        try:
            self.close()
        except (AttributeError, OSError):   # __init__ failed, or the interpreter ends
            pass


class WakingQueue(LightQueue):
    """A Queue that calls `on_put` (under its mutex, so cheaply) after every put."""

    def __init__(self, on_put: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.on_put = on_put or _nothing

    def _put(self, item: Any) -> None:
        super()._put(item)
        self.on_put()


def _nothing() -> None:
    return None


def waking_copy(old: queue.Queue[Any], on_put: Callable[[], None]) -> WakingQueue:
    """A WakingQueue holding what `old` holds (taken while nothing else uses it)."""
    new = WakingQueue(on_put)
    new.queue.extend(old.queue)
    return new


class DecodedAssociateRQ(A_ASSOCIATE_RQ):
    """An A-ASSOCIATE-RQ decoded once for every association proposing the same bytes;
    read-only, and `to_primitive()` hands out copies of the primitive built once."""

    primitive: A_ASSOCIATE
    raw: bytes

    def to_primitive(self) -> A_ASSOCIATE:
        # Each association gets its own primitive and lists (AE-6 sets a rejection's
        # result on it); the presentation contexts and user information items inside
        # are shared: negotiation only reads them (pynetdicom.presentation
        # .negotiate_as_acceptor builds new contexts for the result).
        out = copy.copy(self.primitive)
        out._presentation_context_definition_list = list(
            self.primitive.presentation_context_definition_list)
        out._user_information = list(self.primitive.user_information)
        # the negotiation cache's key (dicom/negotiation.py)
        out.proposal = self.raw  # type: ignore[attr-defined]
        return out


# Distinct A-ASSOCIATE-RQs kept decoded (a site has a few kinds of peer, each sending the
# same bytes every time); the largest PDU is bounded by transport.MAX_CONTROL_PDU.
ASSOCIATE_RQ_CACHE = 32
_rq_cache: ByProposal[DecodedAssociateRQ] = ByProposal(ASSOCIATE_RQ_CACHE)


def decoded_associate_rq(raw: bytes) -> DecodedAssociateRQ:
    """The decoded A-ASSOCIATE-RQ `raw`, from the cache when the same bytes came before
    (one that fails to become a primitive is returned plain, and not kept)."""
    pdu = _rq_cache.get(raw)
    if pdu is not None:
        return pdu
    decoded = A_ASSOCIATE_RQ()
    decoded.decode(raw)
    try:
        primitive = decoded.to_primitive()
    except Exception:   # e.g. context ID 0: AE-6 meets it and aborts, as upstream's would
        return cast(DecodedAssociateRQ, decoded)
    decoded.__class__ = DecodedAssociateRQ
    pdu = cast(DecodedAssociateRQ, decoded)
    pdu.primitive = primitive
    pdu.raw = raw
    _rq_cache.put(raw, pdu)
    return pdu


class EventDUL(AwaitingCloseDUL):
    """pynetdicom's DUL thread, blocking on the socket and its queues between events."""

    def __init__(self, assoc: Association, wake_assoc: Callable[[], None],
                 send_queue: Callable[..., WakingQueue] | None = None,
                 state_machine: type | None = None) -> None:
        """Upstream's `DULServiceProvider.__init__`, its queues built as waking ones.

        Upstream builds four queues (a lock and three conditions each), a state
        machine and its thread; the waking queues used to be built on top, replacing
        three of them. `send_queue(dul, on_put)` builds the to-provider queue,
        `state_machine(dul)` the state machine (upstream's classes by default).
        """
        self._assoc = assoc
        self.socket = None
        self._wakeup = Wakeup()     # closed by the reactor's end, or with the DUL
        self._wake_assoc = wake_assoc
        self.event_queue = WakingQueue(self._wake_reactor)
        self.to_provider_queue = (WakingQueue(self._wake_reactor) if send_queue is None
                                  else send_queue(self, on_put=self._wake_reactor))
        self.to_user_queue = WakingQueue(wake_assoc)
        self._recv_pdu = LightQueue()
        self._idle_timer = Timer(60)
        self.artim_timer = Timer(30)
        self.state_machine = (state_machine or StateMachine)(self)
        self._run_loop_delay = 0.001
        threading.Thread.__init__(self, target=make_target(self.run_reactor))
        self.daemon = False
        self._kill_thread = False
        self._changed = threading.Condition()
        # Cleared while the association's thread runs the set-up (`read_request`).
        self._handed_over = LightEvent()
        self._handed_over.set()

    def _wake_reactor(self) -> None:
        # Not for the reactor's own puts (an event per PDU read, per primitive sent):
        # it empties its queues before it waits, and the pipe write cost ~5% of a
        # C-GET sub-operation's CPU.
        if threading.current_thread() is not self:
            self._wakeup.set()

    def run_reactor(self) -> None:
        """Upstream's reactor loop, blocking in `poll()` where upstream sleeps.

        Upstream: one primitive sent or one PDU read per loop, then one state machine
        event; when there was none, `time.sleep(0.001)` and look again. Every received
        PDU waits up to 1 ms to be read, every sent one up to 1 ms to be sent; idle, the
        thread wakes 1000 times a second.
        Upstream change that would remove this: wait on the socket and a queue
        notification in `run_reactor` (pynetdicom's own TODO in `__init__`).
        """
        self._handed_over.wait()
        self._idle_timer.start()
        self.socket = cast(AssociationSocket, self.socket)
        self.assoc._dul_ready.set()
        try:
            while not self._kill_thread:
                if not self._step():
                    self._wait()
        finally:
            self._kill_thread = True
            self._wakeup.close()
            with self._changed:
                self._changed.notify_all()
            self._wake_assoc()

    def _step(self) -> bool:
        """One pass of upstream's loop body, looking for a new event only when none is
        waiting; False when there was nothing to act on.

        Upstream adds an event (a primitive to send, or a PDU read) before it takes one,
        so the queue runs an event behind: the PDU after the A-ASSOCIATE-RQ was read
        and queued before the RQ's own event was acted on, and the P-DATA a peer sent
        early became an A-ABORT (Sta3, AA-8) ahead of the A-ASSOCIATE-RJ already decided
        (then Evt8 in Sta13); a primitive still at the head of its queue was queued
        twice (a raw client, 79 of 200: docs/performance.md "Results: A-ASSOCIATE-RJ
        delivered"). Each PDU is now decoded in the state its predecessor left.
        """
        if self.artim_timer.expired:
            self.event_queue.put("Evt18")
        try:
            if self.event_queue.queue:
                pass
            elif self._process_recv_primitive():
                pass
            elif self._is_transport_event():
                self._idle_timer.restart()
        except Exception:
            self._abort_after_error()       # sets _kill_thread: the loop ends
            return True
        try:
            event = self.event_queue.get(block=False)
        except queue.Empty:
            return False
        self.state_machine.do_action(event)
        with self._changed:
            self._changed.notify_all()
        return True

    # Set while the association's thread runs this reactor itself (`read_request`).
    _inline = False

    def read_request(self, deadline: float) -> bool:
        """Run the reactor in the calling (association) thread until the
        A-ASSOCIATE-RQ is handed to it: True; False when the connection ends, a PDU is
        malformed or `deadline` (monotonic) passes. The reactor's own thread is
        started first and waits until the answer is sent (`send_pdu`), so its start
        overlaps the set-up instead of delaying the first request after it (the
        acceptor's `InlineDUL`, dicom/acceptor.py, starts it only when a request
        needs it, `_start_for_request`).

        Upstream: the association thread starts the DUL thread, waits for it to be
        ready, then waits for the A-ASSOCIATE-RQ on its queue; the DUL thread reads
        it, hands it over, waits for the answer and sends it: a wait for the DUL
        thread to run, then two thread hand-offs between the RQ and the AC, each a
        scheduler wake-up (0.1-1 ms on a loaded machine, docs/performance.md).
        The state machine runs the same actions, in one thread at a time.
        Upstream change that would remove this: the acceptor's reactor reading and
        answering the A-ASSOCIATE-RQ before it hands over to the association.
        """
        self._inline = True
        self._handed_over.clear()
        self._start_for_request()
        while not self._kill_thread and not self.to_user_queue.qsize():
            if self.state_machine.current_state == "Sta1" and self.event_queue.empty():
                break                       # the connection ended (AA-2, AA-3, AA-5)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if not self._step():
                self._wait(remaining)
        if self.to_user_queue.qsize() and not self._kill_thread:
            return True
        self._hand_over()
        return False

    def _start_for_request(self) -> None:
        self.start()

    def _hand_over(self) -> None:
        self._inline = False
        self._handed_over.set()

    def _after_inline_send(self) -> None:
        """What the set-up's thread does once it has queued a primitive: send it, and
        let the reactor's thread take over."""
        while self.to_provider_queue.qsize() and not self._kill_thread:
            self._step()
        self._hand_over()

    def send_pdu(self, primitive: Any) -> None:
        """Upstream's, with an accept's A-ASSOCIATE-AC encoded in the caller's thread
        (dicom/negotiation.py) and, while the set-up runs in the association thread
        (`read_request`), the first primitive sent from it: then the reactor's
        thread takes over."""
        if type(primitive) is A_ASSOCIATE and primitive.result == 0x00 \
                and self.assoc.is_acceptor:
            primitive = encode_accept(primitive)
        super().send_pdu(primitive)
        # Another thread (an abort at shutdown) only queues: the set-up's thread acts.
        if self._inline and threading.current_thread() is self.assoc:
            self._after_inline_send()

    def _decode_pdu(self, bytestream: bytearray) -> tuple[Any, str]:
        """Upstream's decode, with A-ASSOCIATE-RQs decoded once per distinct proposal
        and, in Sta6, P-DATA-TF PDUs read straight into their PDVs (`read_pdata`).

        Upstream: decodes every A-ASSOCIATE-RQ and builds its primitive, one UID object
        (and one validation) per syntax: storescu's 128 presentation contexts cost
        about 4.5 ms, and a modality sends the same bytes on every association.
        Upstream change that would remove this: a cheaper decode of the RQ (UIDs
        checked once, no per-item objects), or a decode cache of its own.
        """
        if bytestream[:1] == b"\x04" and self.state_machine.current_state == "Sta6":
            pdata = read_pdata(self.assoc, bytes(bytestream))   # dicom/receive.py
            if pdata is not None:
                return pdata, "Evt10"
        if bytestream[:1] != b"\x01":
            return super()._decode_pdu(bytestream)
        raw = bytes(bytestream)
        evt.trigger(self.assoc, evt.EVT_DATA_RECV, {"data": raw})
        pdu = decoded_associate_rq(raw)
        evt.trigger(self.assoc, evt.EVT_PDU_RECV, {"pdu": pdu})
        return pdu, "Evt6"

    def _abort_after_error(self) -> None:
        # What upstream's reactor does when reading or sending raises.
        pdu = A_ABORT_RQ()
        pdu.source = 0x02
        pdu.reason_diagnostic = 0x00
        sock = cast(AssociationSocket, self.socket)
        try:
            sock.send(pdu.encode())
        except Exception:
            pass
        self.assoc.is_aborted = True
        self.assoc.is_established = False
        self.assoc._kill = True
        self._kill_thread = True

    def _wait(self, limit: float = _MAX_WAIT_S) -> None:
        """Block until the socket is readable, something is queued, a timer is due, or
        `limit` seconds have passed."""
        timeout = min(limit, _MAX_WAIT_S)
        artim = self.artim_timer
        if artim._start_time is not None and artim._end_time is None \
                and artim.timeout is not None:
            timeout = min(timeout, max(0.0, artim.remaining))
        waiter = select.poll()
        waiter.register(self._wakeup.fileno(), select.POLLIN)
        sock = self.socket
        raw = sock.socket if sock is not None and sock._is_connected else None
        if raw is not None:
            try:
                fd = raw.fileno()
            except OSError:
                fd = -1
            if fd >= 0:
                waiter.register(fd, select.POLLIN | select.POLLPRI)
        waiter.poll(timeout * 1000)
        self._wakeup.clear()

    def kill_dul(self) -> None:
        """Upstream's flag, and a wake-up so the reactor sees it now."""
        self._kill_thread = True
        self._handed_over.set()
        self._wakeup.set()

    def stop_dul(self) -> bool:
        """Stop the reactor in Sta1 and wait for its thread without polling.

        Upstream: `while self.is_alive(): time.sleep(0.001)` after setting the flag.
        Upstream change that would remove this: `self.join()` there.
        """
        if self.state_machine.current_state != "Sta1":
            return False
        self.kill_dul()
        if threading.current_thread() is not self and self.is_alive():
            self.join()
        return True

    def wait_changed(self, timeout: float) -> None:
        """Wait until the state machine acts, the thread ends, or `timeout`."""
        with self._changed:
            if self.is_alive() and self.state_machine.current_state != "Sta1":
                self._changed.wait(timeout)


# The response command sets encoded directly (PS3.7 9.3, always Implicit VR Little
# Endian, elements in tag order): CommandField per primitive, then what each element is.
_RESPONSES: dict[type, tuple[type, int]] = {
    C_STORE: (C_STORE_RSP, 0x8001), C_GET: (C_GET_RSP, 0x8010),
    C_FIND: (C_FIND_RSP, 0x8020), C_MOVE: (C_MOVE_RSP, 0x8021),
    C_ECHO: (C_ECHO_RSP, 0x8030),
}
_UI, _US = "UI", "US"
_ELEMENTS: dict[str, tuple[int, str]] = {
    "AffectedSOPClassUID": (0x0002, _UI),
    "MessageIDBeingRespondedTo": (0x0120, _US),
    "Status": (0x0900, _US),
    "AffectedSOPInstanceUID": (0x1000, _UI),
    "NumberOfRemainingSuboperations": (0x1020, _US),
    "NumberOfCompletedSuboperations": (0x1021, _US),
    "NumberOfFailedSuboperations": (0x1022, _US),
    "NumberOfWarningSuboperations": (0x1023, _US),
}
_FIXED = {"CommandGroupLength", "CommandField", "CommandDataSetType"}
# Per response message class: the primitive parameters its command set may carry.
_KEYWORDS: dict[type, tuple[str, ...]] = {
    msg: tuple(e.keyword for e in msg().command_set if e.keyword not in _FIXED)
    for msg, _ in _RESPONSES.values()
}


def _element(elem: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, elem, len(value)) + value


def encode_response(primitive: Any) -> bytes | None:
    """The command set of a C-ECHO/C-STORE/C-FIND/C-GET/C-MOVE response, or None when
    it carries anything but UIDs, the status and sub-operation counts (Error Comment,
    Offending Element...: upstream encodes those)."""
    kind = _RESPONSES.get(type(primitive))
    if kind is None or primitive.MessageIDBeingRespondedTo is None:
        return None
    msg_cls, field = kind
    values: list[tuple[int, bytes]] = [(0x0100, struct.pack("<H", field))]
    for keyword in _KEYWORDS[msg_cls]:
        value = getattr(primitive, keyword, None)
        if value is None:
            continue
        spec = _ELEMENTS.get(keyword)
        if spec is None:
            return None
        elem, vr = spec
        if vr == _US:
            values.append((elem, struct.pack("<H", int(value))))
        else:
            raw = str(value).encode("ascii")
            values.append((elem, raw + b"\0" * (len(raw) % 2)))
    has_data = getattr(primitive, "Identifier", None) is not None
    values.append((0x0800, struct.pack("<H", 0x0001 if has_data else 0x0101)))
    body = b"".join(_element(elem, value) for elem, value in sorted(values))
    return _element(0x0000, struct.pack("<I", len(body))) + body


def pdv_fragments(data: bytes, context_id: int, max_pdu: int, more: bytes,
               last: bytes) -> list[P_DATA]:
    size = len(data) if max_pdu == 0 else max_pdu - 6
    out = []
    for start in range(0, max(len(data), 1), max(size, 1)):
        chunk = data[start:start + size]
        pdata = P_DATA()
        final = start + size >= len(data)
        pdata.presentation_data_value_list.append((context_id, (last if final else more)
                                                   + chunk))
        out.append(pdata)
    return out


class ResponseDIMSE(DIMSEServiceProvider):
    """The DIMSE provider of the event-driven transport: responses encoded directly."""

    def __init__(self, assoc: Association, msg_queue: queue.Queue[Any]) -> None:
        """Upstream's `DIMSEServiceProvider.__init__`, given its (waking) message queue
        instead of building one to be replaced."""
        self._assoc = assoc
        self.cancel_req = {}
        self.message = None
        self.msg_queue = msg_queue

    def send_msg(self, primitive: Any, context_id: int) -> None:
        """Send C-ECHO/C-STORE/C-FIND/C-GET/C-MOVE responses without building a message.

        Upstream: builds a DIMSE message, sets each command element through pydicom,
        encodes the command set twice (the second time for its group length), then
        fragments it: ~0.35 ms of a C-FIND response's ~0.8 ms (docs/performance.md),
        for a command set of six fixed-size elements.
        Upstream change that would remove this: a direct encoding of command sets.
        """
        command = encode_response(primitive) if self._fast_path() else None
        if command is None:
            super().send_msg(primitive, context_id)
            return
        max_pdu = self.maximum_pdu_size
        pdatas = pdv_fragments(command, context_id, max_pdu, b"\x01", b"\x03")
        identifier = getattr(primitive, "Identifier", None)
        if identifier is not None:
            data = identifier.getvalue()
            if data:
                pdatas += pdv_fragments(data, context_id, max_pdu, b"\x00", b"\x02")
        for pdata in pdatas:
            self.dul.send_pdu(pdata)

    def send_encoded(self, command: bytes, data: bytes, context_id: int) -> bool:
        """Send a response whose command set and data set are both encoded already
        (dicom/find_scp.py: C-FIND pending responses); False, with nothing sent, when
        the message object must be built (`_fast_path`)."""
        if not self._fast_path():
            return False
        max_pdu = self.maximum_pdu_size
        for pdata in pdv_fragments(command, context_id, max_pdu, b"\x01", b"\x03") + \
                pdv_fragments(data, context_id, max_pdu, b"\x00", b"\x02"):
            self.dul.send_pdu(pdata)
        return True

    def _fast_path(self) -> bool:
        # EVT_DIMSE_SENT carries the message object: only pynetdicom's own logging
        # handler may be bound (it logs nothing for these responses).
        handlers = self.assoc.get_handlers(evt.EVT_DIMSE_SENT)
        return all(h[0] is standard_dimse_sent_handler  # type: ignore[index]
                   for h in handlers) \
            and not _DIMSE_LOG.isEnabledFor(logging.DEBUG)


_DIMSE_LOG = logging.getLogger("pynetdicom")


class EventReactors(Association):
    """The association thread's side: a mixin placed before our association classes.

    `install_event_reactors()` swaps in an `EventDUL` (before the DUL thread starts) and
    the queues that wake this thread.
    """

    _wake: threading.Event
    _pause: threading.Condition
    _paused = False

    def install_event_reactors(self) -> None:
        """Replace the DUL built by `Association.__init__` with an `EventDUL`."""
        old = self.dul
        if old.is_alive() or getattr(self, "_started_dul", False):
            raise RuntimeError("the DUL thread already runs")
        self._wake = LightEvent()
        self._pause = threading.Condition()
        new = EventDUL(self, self._wake.set, state_machine=type(old.state_machine))
        new.socket = old.socket
        for name in ("event_queue", "to_provider_queue", "to_user_queue"):
            getattr(new, name).queue.extend(getattr(old, name).queue)
        new._idle_timer.timeout = old._idle_timer.timeout
        new.artim_timer.timeout = old.artim_timer.timeout
        self.dul = new
        self.dimse.__class__ = ResponseDIMSE
        self.dimse.msg_queue = waking_copy(self.dimse.msg_queue, self._wake.set)

    # `_is_paused` is upstream's flag, which the send_*() methods and release() poll with
    # `while not self._is_paused: time.sleep(0.0001)`. As a property the poll blocks on
    # a condition instead, without carrying a copy of each of those methods.
    @property
    def _is_paused(self) -> bool:
        self.wait_paused(_MAX_WAIT_S)
        return self._paused

    @_is_paused.setter
    def _is_paused(self, value: bool) -> None:
        pause = getattr(self, "_pause", None)
        if pause is None:
            self._paused = value
            return
        with pause:
            self._paused = value
            if value:
                pause.notify_all()

    def wait_paused(self, timeout: float = _MAX_WAIT_S) -> bool:
        """After `_reactor_checkpoint.clear()`, from another thread: whether the reactor
        has paused within `timeout`. False at once when the association thread does not
        run (a dead reactor never pauses: upstream's `while not self._is_paused` poll
        would spin for ever)."""
        if self._paused or not hasattr(self, "_pause"):
            return self._paused
        if threading.current_thread() is self or not self._thread_running():
            return self._paused
        with self._pause:
            self._pause.wait_for(lambda: self._paused or not self._thread_running(),
                                 timeout)
            return self._paused

    def _thread_running(self) -> bool:
        try:
            return self.is_alive()
        except AssertionError:      # Thread.__init__ has not run yet
            return False

    def _run_reactor(self) -> None:
        """Upstream's acceptor/requestor reactor loop, waiting on an Event between steps.

        Upstream: `time.sleep(0.001)` before each look at the DIMSE and ACSE queues, so
        every request waits up to 1 ms before it is handled and an idle association
        wakes 1000 times a second. The pause protocol is kept: while a `send_*()`
        method holds `_reactor_checkpoint`, this thread is paused and touches nothing.
        Upstream change that would remove this: the same wait in `_run_reactor`.
        """
        while not self._kill:
            with self._pause:
                running = self._reactor_checkpoint.is_set()
                if running:
                    self._paused = False
                else:
                    self._paused = True
                    self._pause.notify_all()
            if not running:
                self._reactor_checkpoint.wait()
                continue
            self._wake.clear()
            if self._reactor_step():
                return
            self._is_paused = True
            if self.dimse.msg_queue.empty() and not self._kill:
                timer = self.dul._idle_timer
                timeout = _MAX_WAIT_S if timer.timeout is None else \
                    min(_MAX_WAIT_S, max(0.0, timer.remaining))
                self._wake.wait(timeout)
        self.wait_dul_done()

    def wait_dul_done(self) -> None:
        """Once the loop has ended on another thread's `kill()` (an abort): wait, as
        that `kill()` does, until the DUL's thread has sent what is queued and the
        connection is closed (Sta1) or the thread has ended.

        Upstream's `run_reactor` shuts the socket down as soon as this loop returns:
        an A-ABORT queued by `abort()` from another thread was lost when the DUL's
        thread had not sent it yet (the peer saw the connection closed, 1 in ~150
        aborts here). After this thread's own `kill()` the DUL has already stopped.
        """
        dul = cast(EventDUL, self.dul)
        while dul.is_alive() and dul.state_machine.current_state != "Sta1":
            dul.wait_changed(_MAX_WAIT_S)

    def _reactor_step(self) -> bool:
        """One pass of upstream's loop body; True when the association has ended."""
        context_id, msg = self.dimse.get_msg(block=False)
        if msg:
            self._serve_request(msg, cast(int, context_id))
        if self.is_established and self.acse.is_release_requested():
            self.acse.send_release(is_response=True)
            LOGGER.info("Association Released")
            self.is_released = True
            self.is_established = False
            evt.trigger(self, evt.EVT_RELEASED, {})
            self.kill()
            return True
        if self.acse.is_aborted():
            LOGGER.info("Association Aborted")
            self.dul.receive_pdu(wait=False)   # EVT_ACSE_RECV fires for subscribers
            self.is_aborted = True
            self.is_established = False
            evt.trigger(self, evt.EVT_ABORTED, {})
            self.kill()
            return True
        if not self._dul_running():
            self.kill()
            return True
        if self.dul.idle_timer_expired():
            LOGGER.error("Network timeout reached")
            if self.network_timeout_response == "A-RELEASE":
                self._is_paused = True
                self._reactor_checkpoint.wait()
                self.release()
                self._is_paused = False
            else:
                self.abort()
            self.kill()
            return True
        return False

    def _dul_running(self) -> bool:
        return self.dul.is_alive()

    def kill(self) -> None:
        """Upstream's `kill()`, waiting on the DUL's state changes, not in 10 ms sleeps.

        Upstream: `while self.dul.is_alive() and not self.dul.stop_dul():
        time.sleep(0.01)`, at the end of every association (release, abort).
        Upstream change that would remove this: a join or condition there.
        """
        self._reactor_checkpoint.set()
        self._kill = True
        self.is_established = False
        self._is_paused = True
        self._wake.set()
        dul = cast(EventDUL, self.dul)
        while dul.is_alive() and not dul.stop_dul():
            dul.wait_changed(_MAX_WAIT_S)
