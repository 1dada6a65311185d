"""Our outgoing associations (C-MOVE sub-operations, Storage Commitment reports): `PacsAE`
makes them `RequestorAssociation`s, whose requests and responses are exchanges the
reactor stays out of (`ExclusiveDimse`). Override module, pinned by
tests/unit/test_transport_pins.py.
"""

from __future__ import annotations

import threading
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.transport import AssociationSocket

from pacs_server.dicom import lent_dul
from pacs_server.dicom.file_sending import FileSending, bound_send_queue
from pacs_server.dicom.lent_dul import LendingDUL
from pacs_server.dicom.mixins import with_mixin
from pacs_server.dicom.reactor import EventReactors
from pacs_server.dicom.response_read import ResponseReadingDUL
from pacs_server.dicom.store_send import RawSendStateMachine, RetrieveDimse


class ExclusiveDimse(DIMSEServiceProvider):
    """The DIMSE provider of our outgoing associations: while a thread of ours waits for
    the response to its request, the association's reactor takes nothing off the queue."""

    exchange: threading.Lock

    def get_msg(self, block: bool = False) -> Any:
        """Upstream's `get_msg`; the reactor's poll gets nothing during an exchange.

        Upstream: the requestor reactor loops "sleep 1 ms; `_is_paused = True`; wait on
        `_reactor_checkpoint`; `_is_paused = False`; `get_msg(block=False)`", and each
        send_*() clears the checkpoint, spins until `_is_paused` is true, sends, waits
        with `get_msg(block=True)` and sets the checkpoint again. Right after a send_*()
        sets it, the woken reactor has not yet cleared `_is_paused`: the next send_*()
        sees a stale "paused", sends, and when the reactor thread is scheduled late
        (any CPU load) it takes the response off the queue ("Received unexpected
        C-STORE service message") and drops it; the sender waits out the DIMSE timeout
        and every later C-MOVE sub-operation fails (reproduced by
        tests/e2e/test_move_under_load.py, 2 of 5 runs with a busy loop per core).
        Here the sender holds `exchange` from before its request until its response
        is taken (`RequestorAssociation`), and the reactor's poll takes a message only
        while holding it too, so a response can never go to the reactor.
        Upstream change that removes this: the reactor pausing under a lock that
        send_*() holds (or a condition instead of the flag and the spin), cf.
        pydicom/pynetdicom#435.
        """
        if block or threading.current_thread() is not self.assoc:
            return super().get_msg(block)
        if not self.exchange.acquire(blocking=False):
            return None, None
        try:
            return super().get_msg(False)
        finally:
            self.exchange.release()



class RequestorAssociation(FileSending):
    """The class of our outgoing associations (C-MOVE sub-operations, reports): each
    request and its response are one exchange the reactor stays out of
    (`ExclusiveDimse`). A thread that holds the DUL (dicom/lent_dul.py, C-STOREs from
    the archive) gives it back before anything else."""

    def release(self) -> None:
        lent_dul.give_back(self)
        super().release()

    def abort(self) -> None:  # type: ignore[override]
        lent_dul.give_back(self)
        super().abort()

    def send_c_store(self, dataset: Any, msg_id: int = 1, priority: int = 2,
                     originator_aet: str | None = None,
                     originator_id: int | None = None) -> Dataset:
        with self._exchange():
            return super().send_c_store(dataset, msg_id, priority, originator_aet,
                                        originator_id)

    def send_c_echo(self, msg_id: int = 1) -> Dataset:
        lent_dul.give_back(self)
        with self._exchange():
            return super().send_c_echo(msg_id)

    def send_n_event_report(self, *args: Any, **kwargs: Any) -> Any:
        lent_dul.give_back(self)
        with self._exchange():
            return super().send_n_event_report(*args, **kwargs)

    def _exchange(self) -> threading.Lock:
        return cast(ExclusiveDimse, self.dimse).exchange


def settle_rejection(assoc: Association) -> None:
    """Report as rejected an association that the peer rejected but upstream reports
    as aborted.

    Upstream `ACSE._negotiate_as_requestor` queues the A-ASSOCIATE-RQ, waits for the
    socket to be connected, then checks `socket._is_connected`; when the peer answers
    at once, the DUL thread may already have read the A-ASSOCIATE-RJ and closed the
    socket (AE-4), so the check fails and the association is aborted with the RJ
    primitive left unread in its queue (against this server on a loaded machine: 8
    of 200 refusals, docs/performance.md "Results: A-ASSOCIATE-RJ delivered").
    Upstream change that would remove this: the response read before the check, or
    the check made only when no response came.
    """
    if assoc.is_established or assoc.is_rejected or not assoc.is_aborted:
        return
    for primitive in list(assoc.dul.to_user_queue.queue):
        if isinstance(primitive, A_ASSOCIATE) and primitive.result in (0x01, 0x02):
            assoc.acceptor.primitive = primitive
            assoc.is_aborted = False
            assoc.is_rejected = True
            return


class EventRequestorAssociation(EventReactors, RequestorAssociation):
    """`RequestorAssociation` on the event-driven reactors."""


class PacsAE(AE):
    """pynetdicom's AE whose outgoing associations (C-MOVE sub-operations, reports) are
    `RequestorAssociation`s, on the event-driven reactors unless `event_reactors` is
    False (`server.transport: stock`).

    Upstream `AE.associate()` instantiates `Association` by name; rather than carry a
    copy of that long method, the association's class is switched to the subclass,
    which adds methods and no state that upstream reads: for the event-driven reactors
    in `_create_socket` (before its DUL thread starts), otherwise once established;
    its DIMSE provider gets `ExclusiveDimse` (one lock) mixed in once established.
    Upstream change that removes it: an association class attribute on the AE.
    """

    event_reactors = True

    def _create_socket(self, assoc: Association, *args: Any) -> AssociationSocket:
        if self.event_reactors:
            assoc.__class__ = EventRequestorAssociation
            assoc.dul.state_machine = RawSendStateMachine(assoc.dul)
            cast(EventRequestorAssociation, assoc).install_event_reactors()
            with_mixin(assoc.dul, ResponseReadingDUL)
            with_mixin(assoc.dul, LendingDUL)
            cast(LendingDUL, assoc.dul).prepare_lending()
        return super()._create_socket(assoc, *args)

    def associate(self, *args: Any, **kwargs: Any) -> Association:
        assoc = super().associate(*args, **kwargs)
        settle_rejection(assoc)
        if not isinstance(assoc, RequestorAssociation):
            assoc.__class__ = RequestorAssociation
        # Before any request of ours: until then nothing can be queued for us.
        assoc.dimse.exchange = threading.Lock()  # type: ignore[attr-defined]
        with_mixin(assoc.dimse, ExclusiveDimse)
        if self.event_reactors:
            with_mixin(assoc.dimse, RetrieveDimse)
        if assoc.is_established:
            bound_send_queue(assoc)
        return assoc
