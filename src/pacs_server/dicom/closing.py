"""The end of a connection: Sta13 waits for the peer's close, and a close never resets.

One of the modules of overrides of pynetdicom (listed in dicom/transport.py's
docstring; pinned by tests/unit/test_transport_pins.py).

PS3.8 9.2 (Table 9-10): after sending an A-ASSOCIATE-RJ (AE-8), an A-RELEASE-RP (AR-4)
or an A-ABORT (AA-1) the acceptor is in Sta13, "awaiting transport connection close":
it reads and ignores what still arrives (AA-6; an A-ASSOCIATE-RQ or an invalid PDU gets
an A-ABORT, AA-7) until the peer closes (Evt17, AR-5) or the ARTIM timer expires (Evt18,
AA-2), and only then closes itself. ARTIM is upstream's ACSE timeout; in Sta13 it is
bounded to `STA13_ARTIM_S` (3 s), so that peers that never close cannot pin threads.

Upstream (`DULServiceProvider._is_transport_event`): in Sta13, when nothing is readable
at that instant, it closes the socket at once. A close with bytes unread in our receive
buffer (a P-DATA the peer sent before it read the RJ), or with bytes arriving after it,
makes the kernel send RST, and an RST can discard the RJ not yet read by the peer (a
raw client sending P-DATA after its refused RQ: 177 of 200 saw a reset or a broken pipe,
docs/performance.md "Results: A-ASSOCIATE-RJ delivered (2026-12-02)"; pynetdicom's
requestor reporting a rejection as "aborted" is its own race, `settle_rejection` in
dicom/requestor.py).
Upstream change that would remove this: `_is_transport_event` in Sta13 reading only
when readable and leaving the close to Evt17/Evt18, and `_shutdown_socket` reading what
is unread before `close()`.
"""

from __future__ import annotations

import socket
from typing import Any

from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu_primitives import A_ABORT, A_ASSOCIATE, A_P_ABORT
from pynetdicom.transport import AssociationSocket

# The ARTIM timer's bound in Sta13. Upstream's ARTIM is the ACSE timeout (30 s by
# default), so a peer that reads its A-ASSOCIATE-RJ (or A-RELEASE-RP) and never closes
# held an association thread that long: a flood of refused connections could pin every
# thread. A peer that is going to close does so within milliseconds of reading the PDU.
STA13_ARTIM_S = 3.0

# What a close discards of unread bytes at most (without it, a peer that keeps sending
# would keep the closing thread reading); past that the kernel resets, as before.
_DISCARD_LIMIT = 1 << 20


def discard_unread(sock: socket.socket) -> None:
    """Read and drop what `sock` has received and nobody read, without waiting."""
    taken = 0
    try:
        if sock.gettimeout() != 0.0:
            sock.settimeout(0.0)    # with a timeout, recv would first wait for data that long
        while taken < _DISCARD_LIMIT:
            # socket.socket's recv on the descriptor also for an SSLSocket: its records
            # are of no use any more, and SSLSocket.recv takes no flags.
            chunk = socket.socket.recv(sock, 65536, socket.MSG_DONTWAIT)
            if not chunk:
                return
            taken += len(chunk)
    except (OSError, ValueError):   # nothing more (EAGAIN), reset, or already closed
        return


def close_socket(sock: socket.socket) -> None:
    """Close `sock` after what was sent (FIN, not RST): the unread bytes dropped before
    and after the shutdown (SHUT_RDWR also wakes a thread blocked reading it), then
    closed. Once closed, nothing (its fd is -1: each call would be system calls
    failing with EBADF, and the association's end closes it up to four times)."""
    if sock.fileno() == -1:
        return
    discard_unread(sock)
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    discard_unread(sock)
    try:
        sock.close()
    except OSError:
        pass


class ClosingSocket(AssociationSocket):
    """An AssociationSocket whose close sends FIN after the last PDU, never RST."""

    def _shutdown_socket(self) -> None:
        """Upstream's `shutdown(SHUT_RDWR)` and `close()`, with the unread bytes dropped
        (`close_socket`): see the module docstring."""
        if self.socket is not None:
            close_socket(self.socket)


class AwaitingCloseDUL(DULServiceProvider):
    """A DUL that, in Sta13, waits for the peer's close or the ARTIM timer (a base of
    the event-driven DUL, dicom/reactor.py, whose wait covers both).

    The acceptor's only: our requestors (dicom/requestor.py) keep upstream's prompt
    close, so that a peer slow to close cannot hold a C-MOVE's sub-association.
    """

    def _is_transport_event(self) -> bool:
        """Upstream's, except in an acceptor's Sta13: read a PDU when one is readable,
        report the close when the socket is closed, else nothing (the reactor waits, for
        at most the ARTIM timer, bounded here to `STA13_ARTIM_S`)."""
        if self.state_machine.current_state != "Sta13" or not self.assoc.is_acceptor:
            return super()._is_transport_event()
        artim = self.artim_timer
        if artim.timeout is None or artim.timeout > STA13_ARTIM_S:
            artim.timeout = STA13_ARTIM_S   # from AE-8/AR-4/AA-1's start: see above
        sock: Any = self.socket
        if sock is None or sock.socket is None or not sock._is_connected:
            if "Evt17" not in self.event_queue.queue:   # closed already: AR-5 to Sta1
                self.event_queue.put("Evt17")
            return True
        if sock.ready:
            self._read_pdu_data()           # AA-6 / AA-7, or Evt17 at the peer's close
            return True
        return False

    def _process_recv_primitive(self) -> bool:
        """Upstream's, except in an acceptor's Sta13, where the association no longer
        exists: an A-ABORT asked for (a server stop aborting every association thread)
        closes the connection now (AA-2, as at ARTIM expiry), and an A-ASSOCIATE answer
        decided after the state machine had already aborted (an early P-DATA in Sta3,
        AA-8: the stock transport's reader runs alongside) is dropped. Upstream: Evt15
        and Evt7/Evt8 are not events of Sta13 (InvalidEventError, and a hard close)."""
        if self.state_machine.current_state == "Sta13" and self.assoc.is_acceptor:
            queued = self.to_provider_queue.queue
            if queued and isinstance(queued[0], (A_ABORT, A_P_ABORT)):
                self.to_provider_queue.get(False)
                self.event_queue.put("Evt18")
                return True
            if queued and isinstance(queued[0], A_ASSOCIATE):
                self.to_provider_queue.get(False)
                return False
        return super()._process_recv_primitive()
