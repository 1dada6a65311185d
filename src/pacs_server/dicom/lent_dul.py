"""A C-MOVE destination's association run by the thread that sends to it, events transport.

An override module of pynetdicom (with dicom/reactor.py, file_sending.py, requestor.py;
pinned by tests/unit/test_transport_pins.py). Each C-MOVE sub-operation is one C-STORE
exchange on our association to the destination: upstream's `send_c_store()` (and
dicom/file_sending.py's `_send_from_file`) pauses that association's own reactor
thread, puts the C-STORE-RQ on the DUL's queue, which wakes the DUL thread to write it,
and waits on the DIMSE queue, where the DUL thread puts the C-STORE-RSP it reads; then
it resumes the reactor thread, which wakes only to go back to sleep. Three thread
hand-offs per sub-operation on the path of every instance (a scheduler wake-up each,
0.05-1 ms on a loaded machine), and ~0.2 ms of CPU in the pipe, queue and condition
calls of the hand-offs (py-spy, docs/performance.md "Results: the retrieve SCP loop").

Here the sending thread borrows the association's DUL for as long as it only sends
C-STOREs from archived files (`borrow`): the DUL thread parks (`LendingDUL`) and the
reactor thread stays paused, and the sending thread writes each C-STORE-RQ's PDUs to
the socket itself (`write`: what `RawSendStateMachine` does in Sta6) and runs the DUL's
reactor step until the response is on the DIMSE queue (`await_response`: the same
`_step` the DUL thread runs, so a C-STORE-RSP takes dicom/response_read.py's path and
anything else upstream's state machine). Anything else (a converted instance through
upstream's `send_c_store`, another request, the release, an abort, an unexpected PDU,
no response in time) gives the DUL back first (`give_back`), and upstream's path goes
on from there. Only one thread runs the state machine at any time: the DUL thread
parks before the borrower starts and is woken after it stops.

Upstream change that would remove this module: a requestor association whose
`send_*()` can run the exchange in the calling thread (the reactor as a step function
rather than a thread loop), or a DUL that writes from the caller under a send lock.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from pynetdicom.dul import DULServiceProvider

from pacs_server.dicom.reactor import _MAX_WAIT_S, EventDUL
from pacs_server.dicom.store_send import RawPData


class LendingDUL(EventDUL):
    """The event-driven DUL of an outgoing association, which parks while another
    thread runs its reactor (a mixin placed before `EventDUL`)."""

    _borrower: threading.Thread | None = None
    _parked = False
    _lend: threading.Condition

    def prepare_lending(self) -> None:
        """Make the condition the two threads meet on (before the DUL thread runs)."""
        self._lend = threading.Condition()

    def _step(self) -> bool:
        """`EventDUL._step`; in the DUL thread, parks instead while the DUL is lent.

        Upstream: the DUL thread is the only one that runs the reactor.
        Upstream change that would remove this: the module docstring's.
        """
        if self._borrower is not None and threading.current_thread() is self:
            self._park()
            return True
        return super()._step()

    def _park(self) -> None:
        lend = self._lend
        with lend:
            self._parked = True
            lend.notify_all()
            while self._borrower is not None and not self._kill_thread \
                    and self._borrower.is_alive():
                lend.wait(_MAX_WAIT_S)
            self._borrower = None
            self._parked = False
            lend.notify_all()

    def _wake_reactor(self) -> None:
        # The borrower's own puts: it empties the queues before it waits.
        if threading.current_thread() is not self._borrower:
            super()._wake_reactor()

    def kill_dul(self) -> None:
        """`EventDUL.kill_dul`, and the parked thread woken to end."""
        super().kill_dul()
        lend = getattr(self, "_lend", None)
        if lend is not None:
            with lend:
                lend.notify_all()

    def lend(self) -> bool:
        """From the borrowing thread: park the DUL thread; False (nothing changed) when
        it does not run or does not park within `_MAX_WAIT_S`."""
        me = threading.current_thread()
        lend = self._lend
        with lend:
            if self._borrower is me:
                return self._parked
            if self._borrower is not None or self._kill_thread or not self.is_alive():
                return False
            self._borrower = me
        self._wakeup.set()
        with lend:
            lend.wait_for(lambda: self._parked or self._kill_thread or not self.is_alive(),
                          _MAX_WAIT_S)
            if not self._parked:
                self._borrower = None
                return False
        return True

    def unlend(self) -> None:
        """From the borrowing thread: the DUL thread takes over again (woken now)."""
        lend = self._lend
        with lend:
            if self._borrower is not threading.current_thread():
                return
            self._borrower = None
            lend.notify_all()
        self._wakeup.set()

    def lent_to_caller(self) -> bool:
        return self._borrower is threading.current_thread() and self._parked


def _dul(assoc: Any) -> LendingDUL | None:
    dul = assoc.dul
    return dul if isinstance(dul, LendingDUL) else None


def borrowed(assoc: Any) -> bool:
    """Whether the calling thread holds `assoc`'s DUL (`borrow`)."""
    dul = _dul(assoc)
    return dul is not None and dul.lent_to_caller()


def borrow(assoc: Any) -> bool:
    """Hold `assoc`'s DUL in the calling thread, its reactor thread paused, when the
    association is established in Sta6 with nothing queued to send; True when held
    (already or now)."""
    dul = _dul(assoc)
    if dul is None:
        return False
    if not assoc.is_established or not writable(dul):
        give_back(assoc)
        return False
    if dul.lent_to_caller():
        return True
    if threading.current_thread() is assoc:
        return False
    assoc._reactor_checkpoint.clear()
    if assoc.wait_paused() and dul.lend():
        return True
    assoc._reactor_checkpoint.set()
    return False


def give_back(assoc: Any, resume_reactor: bool = True) -> None:
    """From the borrowing thread: the DUL's thread takes over again, and unless
    `resume_reactor` is False (an exchange goes on: it resumes it) the association's
    reactor thread too. From any other thread nothing: the borrower gives it back
    when it next looks (a queued primitive, the end of the association)."""
    if not borrowed(assoc):
        return
    _dul(assoc).unlend()                # type: ignore[union-attr]
    if resume_reactor:
        assoc._reactor_checkpoint.set()


def writable(dul: DULServiceProvider) -> bool:
    """Whether PDUs written now go out as the DUL would send them: in Sta6, with
    nothing queued before them."""
    return dul.state_machine.current_state == "Sta6" and not dul.to_provider_queue.qsize() \
        and dul.socket is not None


def write(assoc: Any, pdata: RawPData) -> None:
    """Write finished P-DATA-TF PDUs to the borrowed association's socket, as
    `RawSendStateMachine` does for a queued `RawPData` in Sta6 (upstream's
    `AssociationSocket.send`: all of it, or Evt17 queued when the connection fails)."""
    assoc.dul.socket.send(memoryview(pdata.encoded))


def await_response(assoc: Any) -> tuple[Any, Any] | None:
    """Run the borrowed DUL's reactor until a DIMSE message is on the queue: that
    (context ID, message); None when the association ends, an A-RELEASE/A-ABORT or
    anything else for the association's reactor arrives, or the DIMSE timeout passes
    (the DUL is then given back, the association's reactor thread still paused, and
    the caller goes on as upstream: `get_msg(block=True)`)."""
    dul: LendingDUL = assoc.dul
    messages = assoc.dimse.msg_queue
    timeout = assoc.dimse.dimse_timeout
    deadline = None if timeout is None else time.monotonic() + timeout
    while not messages.qsize():
        if dul._kill_thread or not assoc.is_established or dul.to_user_queue.qsize():
            break
        remaining = _MAX_WAIT_S if deadline is None else deadline - time.monotonic()
        if remaining <= 0:
            break
        dul._wait(remaining)
        # As the DUL's loop: nothing after kill_dul (AA-3 closes the socket, which
        # queues an Evt17 that is never to be acted on); and once the message is there,
        # the rest is left for whoever runs the DUL next.
        while not dul._kill_thread and not messages.qsize() and dul._step():
            pass
    if messages.qsize():
        item: tuple[Any, Any] = assoc.dimse.get_msg(block=True)
        if item[1] is None:         # the association ended (AA-2, AA-3, AA-4...)
            give_back(assoc)
        return item
    give_back(assoc, resume_reactor=False)
    return None
