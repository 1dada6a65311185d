"""Sending archived files on an association: C-GET and C-MOVE sub-operations from the
stored Part-10 files, and the bounded send queue (override module, pinned by
tests/unit/test_transport_pins.py; mixed into the association classes of
dicom/transport.py and dicom/requestor.py).

Retrieve without re-encoding
----------------------------
pynetdicom's C-GET and C-MOVE SCPs (`QueryRetrieveServiceClass._get_scp/_move_scp`)
send each instance the handler yields with `Association.send_c_store()`, but accept
only a `Dataset` (anything else counts as a failed sub-operation). So every instance
was read, decoded and re-encoded: 0.12-0.18x Orthanc's C-GET rate, and a 1 GB instance
held three times in memory (docs/performance.md). `send_c_store()` itself can stream a
Part-10 file from disk (chunked send). The handler therefore yields a `StoredFile`, a
Dataset that only names the archived file, and `PacsAssociation.send_c_store()` hands
the file path to upstream when the peer accepted the stored syntax, or a converted
dataset (services/transcode.py) when it accepted another one. On the event-driven
transport a file sent as stored bypasses upstream's send_c_store: dicom/store_send.py.
Upstream change that removes it: let retrieve handlers yield a file path.

Bounded send queue
------------------
pynetdicom's DUL takes what to send from an unbounded `queue.Queue`; the association
thread encodes P-DATA fragments as fast as it reads the file, so a large instance piles
up in memory when the peer reads slower than the disk (a 300 MB C-GET peaked at 252 MB of
RSS). `BoundedSendQueue` makes the producing thread wait while `SEND_QUEUE_PDUS`
fragments are queued; the DUL thread itself never waits on it.
Upstream change that removes it: a bounded `to_provider_queue` (or a send window).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import structlog
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import PresentationContext

from pacs_server.dicom import lent_dul
from pacs_server.dicom.reactor import EventReactors, WakingQueue
from pacs_server.dicom.store_send import (
    RawPData,
    RawSendStateMachine,
    plain_status,
    raw_send_allowed,
    send_file,
    store_rq_command,
)
from pacs_server.errors import TranscodeFailed
from pacs_server.services import transcode

log = structlog.get_logger(__name__)

_SOP_CLASS, _SOP_INSTANCE = Tag(0x00080016), Tag(0x00080018)


class StoredFile(Dataset):
    """A sub-operation's instance by reference to its archived Part-10 file.

    It carries SOP Class and SOP Instance UID as elements, so that pynetdicom can list
    a failed sub-operation in Failed SOP Instance UID List (PS3.4 C.4.2.3.1); nothing
    else of the instance is read until it is sent.
    """

    stored_path: Path
    stored_syntax: str
    allow_transcode: bool
    # The two UIDs as plain strings too: reading an element through Dataset's
    # __getattr__ costs a keyword lookup each time.
    sop_class: str
    sop_instance: str

    def __init__(self, path: Path, sop_class: str, sop_instance: str,
                 transfer_syntax: str, allow_transcode: bool = True) -> None:
        # The elements handed to Dataset, and plain attributes set past Dataset's
        # __setattr__ (its keyword lookup): one is made per sub-operation.
        super().__init__({_SOP_CLASS: DataElement(_SOP_CLASS, "UI", sop_class),
                          _SOP_INSTANCE: DataElement(_SOP_INSTANCE, "UI", sop_instance)})
        plain = object.__setattr__
        plain(self, "stored_path", path)
        plain(self, "stored_syntax", transfer_syntax)
        plain(self, "allow_transcode", allow_transcode)
        plain(self, "sop_class", str(sop_class))
        plain(self, "sop_instance", str(sop_instance))


class FileSending(Association):
    """pynetdicom's Association, sending a `StoredFile` from its file (a mixin of the
    acceptor and the requestor association classes)."""

    # PDUs to go out just before the next C-STORE-RQ, in the same queue item and write
    # (dicom/retrieve_scp.py: a C-GET's pending response); whoever sends anything else
    # on the association first sends them (`flush_ahead`).
    send_ahead = b""

    def send_c_store(self, dataset: Any, msg_id: int = 1, priority: int = 2,
                     originator_aet: str | None = None,
                     originator_id: int | None = None) -> Dataset:
        """Upstream `send_c_store()`, given the stored file's path when the peer takes
        the stored syntax, else the instance converted to a syntax it takes.

        Raises (pynetdicom counts the sub-operation as failed):
            TranscodeFailed: no accepted syntax can be produced.
        """
        if isinstance(dataset, StoredFile):
            stored, dataset = dataset, self._payload(dataset)
            if isinstance(dataset, Path):
                status = self._send_from_file(stored, dataset, msg_id, priority,
                                              originator_aet, originator_id)
                if status is not None:
                    return status
        self.flush_ahead()
        lent_dul.give_back(self)        # upstream's exchange needs the DUL's thread
        return super().send_c_store(dataset, msg_id, priority, originator_aet, originator_id)

    def flush_ahead(self) -> None:
        """Queue the PDUs held for the next C-STORE-RQ (`send_ahead`) now."""
        ahead, self.send_ahead = self.send_ahead, b""
        if ahead:
            self.dul.send_pdu(RawPData(ahead))

    def _send_from_file(self, stored: StoredFile, path: Path, msg_id: int, priority: int,
                        originator_aet: str | None,
                        originator_id: int | None) -> Dataset | None:
        """Upstream `send_c_store(path)` with the C-STORE-RQ encoded and queued by
        dicom/store_send.py (the event-driven transport; upstream's otherwise), or None
        before anything is sent when that path does not apply.

        Upstream: ~1.2 ms of CPU per 39 KB instance before the request is on the wire
        (primitive, message, pydicom command set encoded twice, File Meta read with
        pydicom, one P-DATA and one PDU object per fragment); see store_send.py.
        Upstream change that removes it: see store_send.py.
        """
        if not (self.is_established and isinstance(self, EventReactors)
                and isinstance(self.dul.state_machine, RawSendStateMachine)
                and raw_send_allowed(self)):
            return None
        context = self._store_context(stored.sop_class, stored.stored_syntax)
        command = store_rq_command(stored.sop_class, stored.sop_instance,
                                   msg_id, priority, originator_aet, originator_id)
        queued = 0
        # A C-MOVE destination: the DUL run by this thread (dicom/lent_dul.py).
        lent = lent_dul.borrow(self)
        if not lent and self.dul._kill_thread:
            # The DUL has ended (AA-3: an A-ABORT the previous exchange read in this
            # thread) and the paused reactor has not yet marked the association aborted:
            # the one (None, None) AA-3 queued was that exchange's answer, so a request
            # queued now would wait out the DIMSE timeout for nothing.
            self._handle_no_response()
            return Dataset()

        def send(pdata: RawPData) -> None:
            nonlocal queued
            queued += 1
            if lent:
                lent_dul.write(self, pdata)
            else:
                self.dul.send_pdu(pdata)

        if not lent:
            # Upstream's pause of the reactor around the exchange (send_c_store).
            self._reactor_checkpoint.clear()
            if not cast(EventReactors, self).wait_paused():
                # The reactor has ended or is stuck: an exchange now would wait out the
                # DIMSE timeout, as with an ended DUL above.
                self._reactor_checkpoint.set()
                self._handle_no_response()
                return Dataset()
        ahead, self.send_ahead = self.send_ahead, b""
        try:
            if not send_file(send, path, command, int(cast(int, context.context_id)),
                             self.dimse.maximum_pdu_size, ahead):
                self.send_ahead = ahead
                self._resume_reactor(lent)
                return None
        except BaseException:
            self._resume_reactor(lent)
            if queued:      # part of a message is on the wire: nothing can follow it
                self.abort()
            else:
                self.send_ahead = ahead
            raise
        got = lent_dul.await_response(self) if lent else None
        if got is None:
            got = self.dimse.get_msg(block=True)
            self._reactor_checkpoint.set()
        rsp = got[1]
        if rsp is None:
            self._handle_no_response()
            return Dataset()
        return plain_status(rsp) or self._check_received_status(rsp)

    def _resume_reactor(self, lent: bool) -> None:
        """After an exchange that did not happen: the association's reactor runs
        again (and its DUL, when this thread held it)."""
        if lent:
            lent_dul.give_back(self)
        else:
            self._reactor_checkpoint.set()

    def _store_context(self, sop_class: str, syntax: str) -> PresentationContext:
        """Upstream's `_get_valid_context(sop_class, syntax, "scu",
        allow_conversion=False)`, looked up once per association and pair (the
        accepted contexts do not change once established: a C-GET accepts ~100).

        Raises:
            ValueError: no such context (upstream's, not kept).
        """
        cache: dict[tuple[str, str], PresentationContext] = \
            self.__dict__.setdefault("_context_cache", {})
        context = cache.get((sop_class, syntax))
        if context is None:
            context = cache[(sop_class, syntax)] = self._get_valid_context(
                sop_class, syntax, "scu", allow_conversion=False)
        return context

    def _payload(self, stored: StoredFile) -> Path | Dataset:
        accepted = self.accepted_syntaxes(stored.sop_class)
        target = transcode.plan(stored.stored_syntax, accepted) if stored.allow_transcode \
            else (stored.stored_syntax if stored.stored_syntax in accepted else None)
        if target is None:
            log.warning("retrieve.no_usable_syntax", sop_instance_uid=str(stored.SOPInstanceUID),
                        stored=stored.stored_syntax, accepted=accepted,
                        transcode=stored.allow_transcode)
            raise TranscodeFailed(f"stored as {stored.stored_syntax}, the peer accepts "
                                  f"{', '.join(accepted) or 'no context for the SOP class'}")
        if target == stored.stored_syntax:
            return stored.stored_path
        try:
            converted = transcode.convert(stored.stored_path, target)
        except Exception as exc:
            log.warning("retrieve.transcode_failed", sop_instance_uid=str(stored.SOPInstanceUID),
                        stored=stored.stored_syntax, target=target, error=str(exc))
            raise
        log.debug("retrieve.transcoded", sop_instance_uid=str(stored.SOPInstanceUID),
                  stored=stored.stored_syntax, target=target)
        return converted

    def accepted_syntaxes(self, sop_class: str) -> list[str]:
        """Transfer syntaxes of the accepted contexts on which we may send `sop_class`
        as Storage SCU, in the order they were accepted (once per association and SOP
        class while established: they do not change)."""
        cache: dict[str, list[str]] = self.__dict__.setdefault("_syntax_cache", {})
        out = cache.get(sop_class)
        if out is None:
            out = self._accepted_syntaxes(sop_class)
            if self.is_established:
                cache[sop_class] = out
        return list(out)

    def _accepted_syntaxes(self, sop_class: str) -> list[str]:
        out: list[str] = []
        for cx in self.accepted_contexts:
            if cx.abstract_syntax != sop_class or not cx.transfer_syntax:
                continue
            # As acceptor (C-GET) only where the requestor took the SCP role.
            if not cx.as_scu:
                continue
            ts = str(cx.transfer_syntax[0])
            if ts not in out:
                out.append(ts)
        return out


# P-DATA fragments the DUL may hold for sending: at most this times the peer's max PDU.
SEND_QUEUE_PDUS = 16
_STALL_S = 60.0


class BoundedSendQueue(WakingQueue):
    """The DUL's to-provider queue, bounded for the threads that put P-DATA on it
    (waking the event-driven DUL, dicom/reactor.py, like the queue it replaces)."""

    def __init__(self, consumer: threading.Thread, limit: int = SEND_QUEUE_PDUS,
                 on_put: Callable[[], None] | None = None) -> None:
        super().__init__(on_put)    # maxsize 0: Queue.put itself never blocks
        self._consumer = consumer
        self._limit = limit

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if isinstance(item, P_DATA) and threading.current_thread() is not self._consumer:
            with self.not_full:     # Queue.get() notifies it after every item
                waited = 0.0
                while (self._qsize() >= self._limit and self._consumer.is_alive()
                       and waited < _STALL_S):
                    self.not_full.wait(0.05)
                    waited += 0.05
        super().put(item, block, timeout)


def bound_send_queue(assoc: Association) -> None:
    """Give the association's DUL a `BoundedSendQueue` (while nothing is queued)."""
    old = assoc.dul.to_provider_queue
    bounded = BoundedSendQueue(assoc.dul, on_put=getattr(old, "on_put", None))
    while True:
        try:
            bounded.put(old.get_nowait())
        except queue.Empty:
            break
    assoc.dul.to_provider_queue = bounded
