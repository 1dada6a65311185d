"""Where the server goes below pynetdicom's handler API: the acceptor's transport,
hardened. Every override of pynetdicom lives in this module or in one of these (each
with a docstring per override: what upstream does, why, the upstream change that would
remove it):

- dicom/reactor.py: the event-driven reactors (`server.transport: events`), mixed into
  our association classes here (`EventPacsAssociation`) and in dicom/requestor.py;
- dicom/acceptor.py: `EventPacsAssociation` built with those pieces directly
  (`init_event_association`), one thread until a request other than
  C-ECHO/C-STORE/C-FIND;
- dicom/negotiation.py: a proposal negotiated once, the A-ASSOCIATE-AC encoded once;
- dicom/find_scp.py, dicom/storage_scp.py, dicom/retrieve_scp.py: the C-FIND, C-STORE
  and C-GET/C-MOVE SCP loops, run from `PacsAssociation._serve_request`;
- dicom/file_sending.py: retrieve from the archived files (`StoredFile`,
  `FileSending`) and the bounded send queue; dicom/store_send.py: a retrieve's
  C-STORE-RQ from the file and its C-STORE-RSP on the event-driven transport;
  dicom/response_read.py: a C-STORE-RSP handed from the DUL thread to the DIMSE queue;
- dicom/requestor.py: our outgoing associations (`PacsAE`, `RequestorAssociation`,
  `ExclusiveDimse`); dicom/lent_dul.py: a C-MOVE destination's DUL run by the thread
  that sends to it;
- dicom/receive.py: C-STORE data sets received into their archive file, or dropped
  unread below the reserve (`gate_data_sets` installs it), P-DATA-TF PDUs read into
  their PDVs (`read_pdata`);
- dicom/accept.py: a worker process's listener on the supervisor's socket, the least
  busy worker accepting first; it admits in the connection's thread (step 1 below);
- dicom/closing.py: Sta13 (PS3.8 9.2) waiting for the peer's close or ARTIM after an
  A-ASSOCIATE-RJ, A-RELEASE-RP or A-ABORT, and a close that sends FIN, never RST;
- dicom/connection.py: the accept loop's admission, the request handler (TLS
  handshake, building the association) and, on the event-driven transport, one thread
  per connection: the association's own.

tests/unit/test_transport_pins.py fails when the source of an overridden or
relied-upon upstream function changes (pynetdicom is pinned to the tested minor
version).

What a connection goes through, here and in dicom/connection.py:

1. accept loop (`PacsAssociationServer.verify_request`): the connection is counted as
   unassociated, or closed at once when its address or the server holds too many;
   no thread is started for a refused connection.
2. the connection's own thread (`PacsRequestHandler.handle`; on the event-driven
   transport the association's thread itself): the TLS handshake, with
   `server.negotiation_timeout` as its deadline; then the association.
3. `PacsAssociation`: waits `negotiation_timeout` for the A-ASSOCIATE-RQ (not
   `acse_timeout`), and stops waiting when the DUL thread dies on a malformed PDU;
   on the event-driven transport it reads the RQ and sends the answer in its own
   thread (`EventDUL.read_request`), and goes on running the DUL until a request
   other than C-ECHO/C-STORE/C-FIND starts the DUL's thread (dicom/acceptor.py).
4. `PolicyACSE`: `AssociationPolicy.decide()` before pynetdicom negotiates, or before
   the outcome of the same proposal is replayed (dicom/negotiation.py).
5. `GuardedSocket`: a declared PDU length above the limit gets an A-ABORT before its
   body is read, and a PDU must arrive whole within the read deadline (slow senders).

Retrieve from the archived files (`StoredFile`, `FileSending`) and the bounded send
queue are in dicom/file_sending.py; our outgoing associations (`PacsAE`,
`RequestorAssociation`, `ExclusiveDimse`) in dicom/requestor.py.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import structlog
from pynetdicom import evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_MOVE
from pynetdicom.events import Event
from pynetdicom.pdu import A_ABORT_RQ

from pacs_server.dicom.acceptor import Handlers, InlineAcceptor, init_event_association
from pacs_server.dicom.closing import AwaitingCloseDUL, ClosingSocket, close_socket
from pacs_server.dicom.file_sending import BoundedSendQueue, FileSending
from pacs_server.dicom.find_scp import serve_find
from pacs_server.dicom.mixins import with_mixin
from pacs_server.dicom.negotiation import (
    capture,
    is_encoded_accept_due,
    proposal_key,
    replay,
    send_encoded_accept,
)
from pacs_server.dicom.policy import AssociationPolicy, Refusal
from pacs_server.dicom.reactor import EventDUL
from pacs_server.dicom.receive import GatedDimse, receive_stores
from pacs_server.dicom.retrieve_scp import serve_retrieve
from pacs_server.dicom.service import Precheck
from pacs_server.dicom.storage_scp import serve_store
from pacs_server.dicom.store_send import RawSendStateMachine

log = structlog.get_logger(__name__)

P_DATA_TF = 0x04
# A-ASSOCIATE-RQ/AC/RJ, A-RELEASE and A-ABORT have no negotiated maximum. 128 presentation
# contexts with every transfer syntax pydicom knows encode to well under 256 KiB.
MAX_CONTROL_PDU = 256 * 1024


@dataclass
class ConnectionLimits:
    """What the transport reads for every new connection (replaced on SIGHUP)."""

    negotiation_timeout: float
    idle_timeout: float
    acse_timeout: float
    max_pdu: int   # largest P-DATA-TF PDU we receive; 0 = unlimited


class PendingConnection:
    """One unassociated connection counted by the policy; `done()` exactly once."""

    def __init__(self, policy: AssociationPolicy, host: str) -> None:
        self._policy, self._host = policy, host
        self._done = threading.Lock()
        self._released = False

    def done(self) -> None:
        with self._done:
            if self._released:
                return
            self._released = True
        self._policy.connection_done(self._host)


def abort_pdu() -> bytes:
    """A-ABORT, source service provider, reason "no reason given" (PS3.8 9.3.8)."""
    pdu = A_ABORT_RQ()
    pdu.source = 0x02
    pdu.reason_diagnostic = 0x00
    return bytes(pdu.encode())


class GuardedSocket(ClosingSocket):
    """An AssociationSocket that bounds what a peer can make us read, and how slowly."""

    limits: ConnectionLimits
    associated = False
    _body_next = False

    def resting_timeout(self) -> float:
        """The socket's timeout between reads (and for sends): the connection's
        deadline until the association is established, then the idle timeout."""
        lim = self.limits
        return lim.idle_timeout if self.associated else lim.negotiation_timeout

    def mark_associated(self) -> None:
        """The A-ASSOCIATE-AC is sent: from now the idle timeout bounds each PDU."""
        self.associated = True
        try:
            cast(socket.socket, self.socket).settimeout(self.limits.idle_timeout)
        except (OSError, AttributeError):   # closed meanwhile
            pass

    def recv(self, nr_bytes: int) -> bytearray:
        """Read `nr_bytes` whole within the read deadline, refusing oversized PDUs.

        Upstream: reads the 6-byte PDU header, then as many bytes as the header
        declares, with no upper bound (a 4 GiB declared length is read into memory) and
        no deadline (one byte per minute keeps the DUL thread, and the association
        slot, forever: the idle timer only runs between PDUs).
        Upstream change that would remove this: a maximum PDU length enforced on
        receive in `DULServiceProvider._read_pdu_data` and a per-PDU read timeout.
        """
        is_body, self._body_next = self._body_next, False
        if nr_bytes == 0:
            return bytearray()
        lim = self.limits
        try:
            data = self._recv_until(nr_bytes)
        except TimeoutError:
            # Which deadline closed the connection (the peer only sees it closed).
            log.warning("pdu.read_timeout", peer=self._peer(), timeout=(
                "server.idle_timeout" if self.associated else "server.negotiation_timeout"),
                seconds=self.resting_timeout())
            raise
        if not is_body and nr_bytes == 6 and len(data) == 6:
            pdu_type, length = data[0], int.from_bytes(data[2:6], "big")
            limit = (lim.max_pdu if pdu_type == P_DATA_TF else MAX_CONTROL_PDU)
            if limit and length > limit:
                log.warning("pdu.too_long", pdu_type=f"0x{pdu_type:02X}", length=length,
                            limit=limit, peer=self._peer())
                self._abort_now()
                return bytearray()        # the DUL sees a closed transport (Evt17)
            self._body_next = True
        return data

    def _recv_until(self, nr_bytes: int) -> bytearray:
        """`nr_bytes` read within the phase's timeout (`resting_timeout`) from now,
        whatever the number of chunks (a peer trickling bytes is cut off at the deadline).

        The socket's timeout rests at that timeout (set at the connection, and once
        more at `mark_associated`), so a read taken in one `recv` (nearly every PDU,
        its header and its body) leaves it alone: `settimeout` is an ioctl that
        releases the GIL, and setting the remaining time before every `recv` and the
        idle timeout after it cost four of those per PDU, each a wait for the GIL
        behind the other threads (docs/performance.md, "Results: the socket's timeout
        and close"). Further chunks are given what remains of the deadline.
        """
        sock = cast(socket.socket, self.socket)
        resting = self.resting_timeout()
        deadline = time.monotonic() + resting
        out = bytearray()
        timed = False
        if type(sock) is socket.socket and sock.gettimeout():
            # With a timeout, socket.recv polls before it reads, even when the reactor
            # has just polled: on a plain socket (its fd non-blocking while it has a
            # timeout) what has arrived is read straight away, one system call.
            try:
                out += os.read(sock.fileno(), min(65536, nr_bytes))
            except BlockingIOError:
                pass
            else:
                if not out:
                    return out          # the peer closed
        try:
            while len(out) < nr_bytes:
                if out or sock.gettimeout() != resting:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError("PDU not received in time")
                    timed = True
                    sock.settimeout(remaining)
                chunk = sock.recv(min(65536, nr_bytes - len(out)))
                if not chunk:
                    break
                out += chunk
        finally:
            if timed:
                try:
                    sock.settimeout(resting)
                except OSError:
                    pass
        return out

    def _abort_now(self) -> None:
        sock = cast(socket.socket, self.socket)
        try:
            sock.sendall(abort_pdu())
        except OSError:
            pass

    def _peer(self) -> str:
        try:
            host, port = cast(socket.socket, self.socket).getpeername()[:2]
            return f"{host}:{port}"
        except OSError:
            return "?"


class GuardedStateMachine(RawSendStateMachine):
    """The DUL state machine; an action that raises aborts the association at once."""

    def do_action(self, event: str) -> None:
        """Run upstream's action; on any exception send A-ABORT and stop the DUL.

        Upstream: `DULServiceProvider.run_reactor` calls `do_action` outside its
        try/except, so an exception in an action (decoding an A-ASSOCIATE-RQ with
        presentation context ID 0: ValueError; an event invalid in the state, e.g.
        Evt7 in Sta13: InvalidEventError) kills the DUL thread with a traceback and
        sends nothing to the peer, while the association thread keeps waiting.
        Upstream change that would remove this: `do_action` inside the reactor's
        try/except, which already sends A-ABORT for transport errors.
        """
        try:
            if is_encoded_accept_due(self.dul, event):
                self._act("AE-7", event, send_encoded_accept)
            else:
                super().do_action(event)
        except Exception as exc:
            dul = self.dul
            sock = cast(GuardedSocket, dul.socket)
            log.warning("pdu.malformed", peer=sock._peer() if sock else "?", fsm_event=event,
                        state=self.current_state, error=f"{type(exc).__name__}: {exc}"[:200])
            if sock is not None and sock.socket is not None:
                sock._abort_now()
                close_socket(sock.socket)
            assoc = dul.assoc
            was_established = assoc.is_established
            assoc.is_aborted = True
            assoc.is_established = False
            assoc._kill = True
            dul.kill_dul()
            # What upstream's AA-4 (connection closed) reports, so the association's
            # bookkeeping (log line, active gauge) closes like any other.
            if was_established:
                evt.trigger(assoc, evt.EVT_ABORTED, {})
            remote = assoc.requestor.address_info
            evt.trigger(assoc, evt.EVT_CONN_CLOSE,
                        {"address": remote.as_tuple if remote is not None else ("?", 0)})

    def _act(self, name: str, event: str, action: Callable[[Any], str]) -> None:
        # What upstream's do_action does around the action it looks up (pinned).
        next_state = action(self.dul)
        evt.trigger(self.dul.assoc, evt.EVT_FSM_TRANSITION,
                    {"action": name, "current_state": self.current_state,
                     "fsm_event": event, "next_state": next_state})
        self.transition(next_state)


class PolicyACSE(ACSE):
    """ACSE whose acceptor consults the AssociationPolicy first."""

    def _negotiate_as_acceptor(self) -> None:
        """Decide with the policy, then negotiate as upstream does.

        Upstream: checks `ae.require_calling_aet` (titles only: no host, no TLS) and
        rejects on `len(ae.active_associations) > maximum_associations`, which counts
        every acceptor thread, also connections that have not sent an A-ASSOCIATE-RQ,
        so idle connections from anyone lock everybody out. EVT_REQUESTED cannot
        return a decision.
        Upstream change that would remove this: an intervention event at
        A-ASSOCIATE-RQ whose handler returns accept or (result, source, diagnostic), and
        a limit counting established associations only.
        """
        assoc = cast(PacsAssociation, self.assoc)
        assoc.acse_timeout = assoc.limits.acse_timeout
        rq = self.requestor.primitive
        assert rq is not None
        self.requestor.ae_title = rq.calling_ae_title
        refusal = assoc.policy.decide(rq.calling_ae_title, assoc.peer_host, assoc.tls,
                                      assoc.tls_subject)
        assoc.pending.done()
        if refusal is not None:
            assoc.refusal = refusal         # the tracker reports its reason
            # Counted and logged before the A-ASSOCIATE-RJ goes out (upstream: after),
            # so a peer that has its answer finds the rejection counted: the tracker
            # reads the refusal, not the RJ primitive.
            evt.trigger(assoc, evt.EVT_REJECTED, {})
            self.send_reject(*refusal.rjt)
            assoc.kill()
            return
        assoc.admitted = True
        self._negotiate(assoc)
        if assoc.is_established:
            cast(GuardedSocket, assoc.dul.socket).mark_associated()


    def _negotiate(self, assoc: PacsAssociation) -> None:
        """Upstream's negotiation, or its outcome for the same proposal replayed
        (dicom/negotiation.py; event-driven transport only)."""
        key = proposal_key(self)
        server: Any = assoc._server
        cache = server.negotiations if server is not None else None
        if key is None or cache is None:
            super()._negotiate_as_acceptor()
            return
        outcome = cache.get(key)
        if outcome is not None:
            replay(self, outcome)
            return
        super()._negotiate_as_acceptor()
        outcome = capture(self)
        if outcome is not None:
            cache.put(key, outcome)


class PacsAssociation(FileSending):
    """An acceptor association that gives back its policy slots when it ends, and sends
    C-GET sub-operations from the archived files."""

    def __init__(self, ae: Any, policy: AssociationPolicy, limits: ConnectionLimits,
                 pending: PendingConnection, peer_host: str, tls_subject: str | None,
                 handlers: Handlers | None = None) -> None:
        self._init_association(ae, handlers or {})
        self.acse = PolicyACSE(self)
        self.policy, self.limits, self.pending = policy, limits, pending
        self.peer_host = peer_host
        self.tls = tls_subject is not None
        self.tls_subject = tls_subject or ""
        self.admitted = False
        self.refusal: Refusal | None = None
        self.move_precheck: Precheck | None = None

    def _init_association(self, ae: Any, handlers: Handlers) -> None:
        # Upstream's (the stock transport): the request handler binds the handlers.
        super().__init__(ae, MODE_ACCEPTOR)
        self.dul.state_machine = GuardedStateMachine(self.dul)
        with_mixin(self.dul, AwaitingCloseDUL)     # Sta13 (dicom/closing.py)

    def _serve_request(self, msg: Any, context_id: int) -> None:
        """Upstream's `_serve_request`, except for a C-MOVE its precheck refuses: that
        one is answered here with the precheck's status (and Error Comment).

        Upstream: `QueryRetrieveServiceClass._move_scp` takes the destination and the
        sub-operation count from the handler, then associates with the destination,
        and only after that takes a status from it; so an identifier invalid for its
        level (0xA900, PS3.4 C.4.2.1.5) could only be answered after an association
        to the destination had been opened for nothing.
        Upstream change that removes this: `_move_scp` accepting a failure status as
        the handler's first yield.
        A C-FIND goes to dicom/find_scp.py's SCP (`serve_find`, same wrapper as
        upstream's), which sends identifiers our handlers already encoded; a C-STORE
        on the event-driven transport to dicom/storage_scp.py's (`serve_store`); a C-GET
        or C-MOVE on the event-driven transport to dicom/retrieve_scp.py's
        (`serve_retrieve`), which sends pending responses from a template.
        """
        check = self.move_precheck
        cx = self._accepted_cx.get(context_id)
        if (check is not None and cx is not None and isinstance(msg, C_MOVE)
                and msg.is_valid_request and not self._sent_release):
            event = Event(self, evt.EVT_C_MOVE, {"request": msg, "context": cx.as_tuple,
                                                 "_is_cancelled": lambda _msg_id: False})
            refusal = check(event)
            if refusal is not None:
                rsp = C_MOVE()
                rsp.MessageIDBeingRespondedTo = msg.MessageID
                rsp.AffectedSOPClassUID = msg.AffectedSOPClassUID
                for elem in refusal:        # Status, Error Comment (PS3.7 C.4.2)
                    if hasattr(rsp, elem.keyword):
                        setattr(rsp, elem.keyword, elem.value)
                self.dimse.send_msg(rsp, context_id)
                return
        if (serve_find(self, msg, context_id) or serve_store(self, msg, context_id)
                or serve_retrieve(self, msg, context_id)):
            return
        super()._serve_request(msg, context_id)

    def run_reactor(self) -> None:
        """Wait for the A-ASSOCIATE-RQ only while the DUL lives, run upstream's reactor,
        and free the connection's policy slots however it ends.

        Upstream: waits `acse_timeout` for the A-ASSOCIATE-RQ even when the DUL thread
        has already died on a malformed PDU (e.g. presentation context ID 0: the
        decode error aborts the DUL, the association thread keeps waiting 30 s); and
        an exception in the reactor ends the thread without an A-ABORT, the DUL
        thread lingering until the idle timeout.
        Upstream change that would remove this: `receive_pdu` returning when the DUL
        stops, and `run_reactor` aborting on an unexpected exception.
        """
        try:
            if self._await_request():
                super().run_reactor()
        except Exception as exc:  # a bug or malformed input must not keep the slot
            log.error("association.reactor_failed", peer=self.peer_host,
                      error=f"{type(exc).__name__}: {exc}")
            self._hard_stop()
        finally:
            self.pending.done()
            if self.admitted:
                self.policy.release(self.requestor.ae_title, self.peer_host)
            sock = cast(GuardedSocket, self.dul.socket)
            if self._server is not None:
                if sock.socket is not None:
                    self._server.shutdown_request(sock.socket)
                self._server.connection_ended()  # type: ignore[attr-defined]  # connection.py

    def _await_request(self) -> bool:
        if not self._started_dul:
            self.dul.start()
            self._started_dul = True
            self._dul_ready.wait()
        deadline = time.monotonic() + self.limits.negotiation_timeout
        while not self.dul.to_user_queue.qsize():
            remaining = deadline - time.monotonic()
            if not self.dul.is_alive() or remaining <= 0:
                if remaining <= 0:
                    self._log_negotiation_timeout()
                self._hard_stop()
                return False
            self.wait_for_request(remaining)
        return True

    def _log_negotiation_timeout(self) -> None:
        # The peer only sees a closed socket: the log names the deadline that closed it.
        log.warning("association.negotiation_timeout", peer=self.peer_host,
                    timeout="server.negotiation_timeout",
                    seconds=self.limits.negotiation_timeout)

    def wait_for_request(self, timeout: float) -> None:
        """Stock transport: look again in 5 ms (the event-driven one reads the RQ itself)."""
        time.sleep(min(timeout, 0.005))

    def _hard_stop(self) -> None:
        self.dul.kill_dul()
        self._kill = True
        self.is_established = False
        if self.dul.is_alive():
            self.dul.join(2)


class EventPacsAssociation(InlineAcceptor, PacsAssociation):
    """`PacsAssociation` on the event-driven reactors (`server.transport: events`), in
    one thread until a request other than C-ECHO/C-STORE/C-FIND (dicom/acceptor.py)."""

    def _init_association(self, ae: Any, handlers: Handlers) -> None:
        """Built with the event-driven pieces and `handlers` (dicom/acceptor.py)."""
        init_event_association(self, ae, handlers, BoundedSendQueue, GuardedStateMachine)

    def _await_request(self) -> bool:
        """Read the A-ASSOCIATE-RQ in this thread (`EventDUL.read_request`); the DUL's
        thread starts when a request needs it (`InlineDUL.hand_over`)."""
        self._started_dul = True        # upstream's run_reactor must not start it
        dul = cast(EventDUL, self.dul)
        deadline = time.monotonic() + self.limits.negotiation_timeout
        if dul.read_request(deadline):
            return True
        if time.monotonic() >= deadline:
            self._log_negotiation_timeout()
        self._hard_stop()
        return False


def gate_data_sets(assoc: Association, gate: Callable[[], None] | None) -> None:
    """Receive the association's C-STORE data sets into their files (dicom/receive.py),
    `gate` (raising PacsError to refuse) deciding on each before any of it is written."""
    receive_stores(assoc.dimse, gate)
    with_mixin(assoc.dimse, GatedDimse)
