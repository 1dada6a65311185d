"""Where the server goes below pynetdicom's handler API: every override, in one module.

Each override says what upstream does, why that is a problem for us, and what upstream
change would remove it. tests/unit/test_transport.py pins a digest of the source of
every overridden or copied upstream function, so upgrading pynetdicom past the tested
version (pinned in pyproject.toml) fails loudly until the overrides are re-checked.

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
dataset (services/transcode.py) when it accepted another one.
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
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from pacs_server.errors import TranscodeFailed
from pacs_server.services import transcode

log = structlog.get_logger(__name__)


class StoredFile(Dataset):
    """A sub-operation's instance by reference to its archived Part-10 file.

    It carries SOP Class and SOP Instance UID as elements, so that pynetdicom can list
    a failed sub-operation in Failed SOP Instance UID List (PS3.4 C.4.2.3.1); nothing
    else of the instance is read until it is sent.
    """

    def __init__(self, path: Path, sop_class: str, sop_instance: str,
                 transfer_syntax: str, allow_transcode: bool = True) -> None:
        super().__init__()
        self.SOPClassUID = sop_class
        self.SOPInstanceUID = sop_instance
        self.stored_path = path
        self.stored_syntax = transfer_syntax
        self.allow_transcode = allow_transcode


class PacsAssociation(Association):
    """pynetdicom's Association, sending a `StoredFile` from its file."""

    def send_c_store(self, dataset: Any, msg_id: int = 1, priority: int = 2,
                     originator_aet: str | None = None,
                     originator_id: int | None = None) -> Dataset:
        """Upstream `send_c_store()`, given the stored file's path when the peer takes
        the stored syntax, else the instance converted to a syntax it takes.

        Raises (pynetdicom counts the sub-operation as failed):
            TranscodeFailed: no accepted syntax can be produced.
        """
        if isinstance(dataset, StoredFile):
            dataset = self._payload(dataset)
        return super().send_c_store(dataset, msg_id, priority, originator_aet, originator_id)

    def _payload(self, stored: StoredFile) -> Path | Dataset:
        accepted = self.accepted_syntaxes(str(stored.SOPClassUID))
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
        as Storage SCU, in the order they were accepted."""
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


class BoundedSendQueue(queue.Queue[Any]):
    """The DUL's to-provider queue, bounded for the threads that put P-DATA on it."""

    def __init__(self, consumer: threading.Thread, limit: int = SEND_QUEUE_PDUS) -> None:
        super().__init__()          # maxsize 0: Queue.put itself never blocks
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
    bounded = BoundedSendQueue(assoc.dul)
    while True:
        try:
            bounded.put(old.get_nowait())
        except queue.Empty:
            break
    assoc.dul.to_provider_queue = bounded


class PacsRequestHandler(RequestHandler):
    """pynetdicom's RequestHandler, creating a `PacsAssociation`.

    Upstream `_create_association()` instantiates `Association` by name (a local
    import), so the only way to get another class is a copy of it; the copy differs
    in that one line. Upstream change that removes it: an association class attribute
    on the server or the AE.
    """

    def _create_association(self) -> Association:
        assoc = PacsAssociation(self.ae, MODE_ACCEPTOR)
        assoc._server = self.server
        bound_send_queue(assoc)         # ours: not in upstream

        timestamp = datetime.strftime(datetime.now(), "%Y%m%d%H%M%S")
        assoc.name = f"AcceptorThread@{timestamp}"

        sock = AssociationSocket(assoc, client_socket=self.request)
        assoc.set_socket(sock)

        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        # Our contexts are SharedContext objects whose deepcopy is cheap (server.py).
        from copy import deepcopy

        assoc.acceptor.supported_contexts = deepcopy(self.server.contexts)
        assoc.requestor.address_info = self.remote

        for event in self.server._handlers:
            if event.is_intervention and self.server._handlers[event]:
                assoc.bind(event, *self.server._handlers[event])
            elif isinstance(event, evt.NotificationEvent):
                for handler in self.server._handlers[event]:
                    assoc.bind(event, handler[0], handler[1])
        return assoc


class PacsAE(AE):
    """pynetdicom's AE whose outgoing associations (C-MOVE sub-operations) are
    `PacsAssociation`s.

    Upstream `AE.associate()` instantiates `Association` by name; rather than carry a
    copy of that long method, the established association's class is switched to the
    subclass, which adds one method and no state. Upstream change that removes it: an
    association class attribute on the AE.
    """

    def associate(self, *args: Any, **kwargs: Any) -> Association:
        assoc = super().associate(*args, **kwargs)
        assoc.__class__ = PacsAssociation
        if assoc.is_established:
            bound_send_queue(assoc)
        return assoc


def start_server(ae: AE, address: tuple[str, int], evt_handlers: list[Any],
                 contexts: list[Any]) -> ThreadedAssociationServer:
    """Upstream `AE.start_server(block=False)` with our request handler.

    `start_server()` takes no `request_handler`, so this does what it does: make the
    server through `AE.make_server()` (which does take one), register it with the AE
    (its `shutdown()` expects that) and serve in a daemon thread.
    """
    server = ae.make_server(address, evt_handlers=evt_handlers, contexts=contexts,
                            server_class=ThreadedAssociationServer,
                            request_handler=PacsRequestHandler)
    ae._servers.append(server)
    threading.Thread(target=server.serve_forever, name="dicom-listener", daemon=True).start()
    return server
