"""A connection from the accept loop to its association: admission in the accept
loop (`PacsAssociationServer`), the TLS handshake and the association's construction
(`PacsRequestHandler`), and one thread per connection on the event-driven transport,
the association's own.

One of the modules of overrides of pynetdicom (listed in dicom/transport.py's
docstring; pinned by tests/unit/test_transport_pins.py).

Upstream (`ThreadedAssociationServer`, socketserver's `ThreadingMixIn`): the accept loop
starts a thread per connection for the request handler, which builds the
`Association`, starts it (a second thread) and ends. Two thread starts and ends per
association, and a hand-off between them before the A-ASSOCIATE-RQ can be read; the
request-handler thread was 0.58 of 1.95 ms of server CPU per C-ECHO association
(docs/performance.md, "Results: association set-up in one thread (2026-12-02)").

Here the accept loop starts the thread of an association not built yet
(`start_association_thread`: the `threading.Thread` part only, as cheap as the request
handler's thread), and that thread does what the request handler did (the TLS
handshake, building the association in place, EVT_CONN_OPEN), then runs the
association. So `threading.current_thread()` is the association from the start, and
`is_alive()`, `join()` and `active_associations` (the tracker, the drain on SIGTERM,
pacsctl disconnect) work as on a started association; `active_associations` leaves out
one not built yet (`built_associations`), as it left out a request handler's thread.

Upstream change that would remove the thread part: `AssociationServer.process_request`
starting the association's thread with the socket and building the association in it
(or an `association_class` attribute, and `Association.__init__` not calling
`Thread.__init__` itself). The other overrides here say theirs.
"""

from __future__ import annotations

import gc
import socket
import ssl
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, cast

import structlog
from pynetdicom import evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import Association
from pynetdicom.transport import (
    AddressInformation,
    RequestHandler,
    ThreadedAssociationServer,
)

from pacs_server.dicom.acceptor import EchoDimse, Handlers, handler_table
from pacs_server.dicom.closing import close_socket
from pacs_server.dicom.file_sending import bound_send_queue
from pacs_server.dicom.mixins import with_mixin
from pacs_server.dicom.negotiation import NegotiationCache
from pacs_server.dicom.policy import AssociationPolicy
from pacs_server.dicom.requestor import PacsAE
from pacs_server.dicom.response_read import ResponseReadingDUL
from pacs_server.dicom.service import Precheck
from pacs_server.dicom.store_send import RetrieveDimse
from pacs_server.dicom.tls import TlsContexts, peer_subject
from pacs_server.dicom.transport import (
    ConnectionLimits,
    EventPacsAssociation,
    GuardedSocket,
    PacsAssociation,
    PendingConnection,
    gate_data_sets,
)

log = structlog.get_logger(__name__)

def start_association_thread(server: PacsAssociationServer, request: Any,
                             client_address: Any) -> None:
    """From the accept loop: start the thread of an `EventPacsAssociation` that the
    server's request handler builds in it (`build_in_own_thread`).

    Replaces `ThreadingMixIn.process_request`: the same thread start, but the thread
    is the association's, not a request handler's that starts another.
    """
    assoc: Any = EventPacsAssociation.__new__(EventPacsAssociation)
    # What is read of every association thread before it is built: AE and server
    # `active_associations`, and `is_acceptor` / `is_established`.
    assoc._ae = server.ae
    assoc._server = server
    assoc.mode = MODE_ACCEPTOR
    assoc.is_established = False
    assoc._to_build = True
    threading.Thread.__init__(assoc, target=_serve_connection,
                              args=(server, request, client_address),
                              name=f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}",
                              daemon=True)
    assoc.start()


def _serve_connection(server: PacsAssociationServer, request: Any,
                      client_address: Any) -> None:
    # Upstream `ThreadedAssociationServer.process_request_thread` (pinned), in the
    # association's thread: the request handler builds the association here and runs it.
    # A worker's listener admits the connection there first (dicom/accept.py).
    server.process_request_thread(request, client_address)


def build_in_own_thread(*args: Any) -> EventPacsAssociation | None:
    """The current thread, when it is an association started by
    `start_association_thread` and not built yet: built now with `args`; else None."""
    current: Any = threading.current_thread()
    if not isinstance(current, EventPacsAssociation) \
            or not getattr(current, "_to_build", False):
        return None
    current.__init__(*args)  # type: ignore[misc]
    current._to_build = False  # type: ignore[attr-defined]
    return current


def runs_in_own_thread(assoc: Association) -> bool:
    """Whether `assoc` is the current thread (`build_in_own_thread` built it): then
    it is run here, not started."""
    return threading.current_thread() is assoc


def built_associations(associations: list[Association]) -> list[Association]:
    """`associations` without those whose thread has not built them yet."""
    return [a for a in associations if not getattr(a, "_to_build", False)]


class PacsRequestHandler(RequestHandler):
    """Handles one connection in its own thread: TLS handshake, then the association."""

    server: PacsAssociationServer

    def handle(self) -> None:
        """Handshake (TLS port) with a deadline, then start the association (or run
        it: on the event-driven transport this thread is the association's).

        Upstream: `AssociationServer.get_request` wraps the socket and completes the
        TLS handshake inside the accept loop, with no deadline: one client that
        connects and sends nothing stops the server from accepting anyone else.
        Upstream change that would remove this: `wrap_socket(...,
        do_handshake_on_connect=False)` in `get_request` and the handshake done here.
        """
        srv = self.server
        host = str(self.client_address[0])
        pending = PendingConnection(srv.policy, host)
        started = False
        try:
            subject: str | None = None
            if srv.tls is not None:
                wrapped = self._handshake(srv.tls, srv.limits.negotiation_timeout)
                if wrapped is None:
                    pending.done()
                    return
                self.request, subject = wrapped
            else:
                # Until the A-ASSOCIATE-AC: GuardedSocket.mark_associated sets the idle one.
                self.request.settimeout(srv.limits.negotiation_timeout)
            assoc = self._create_association_for(pending, host, subject)
            evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
            started = True      # from here the association's thread ends the connection
            if runs_in_own_thread(assoc):       # the event-driven transport
                assoc.run_reactor()
            else:
                assoc.start()
        except BaseException:
            pending.done()
            raise
        finally:
            if not started:
                srv.connection_ended()

    def _handshake(self, tls: TlsContexts,
                   timeout: float) -> tuple[ssl.SSLSocket, str] | None:
        raw = cast(socket.socket, self.request)
        raw.settimeout(timeout)
        peer = f"{self.client_address[0]}:{self.client_address[1]}"
        try:
            sock = tls.server.wrap_socket(raw, server_side=True,
                                          do_handshake_on_connect=False)
            sock.do_handshake()
        except (ssl.SSLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            log.warning("security.tls_handshake_failed", peer=peer, reason=str(reason),
                        error=str(exc).splitlines()[0][:200] if str(exc) else "")
            self.server.metrics.associations_rejected.labels("tls_handshake").inc()
            close_socket(raw)
            return None
        # The wrapped socket keeps the handshake's timeout, the negotiation one, as a
        # plain connection's until GuardedSocket.mark_associated.
        return sock, peer_subject(sock.getpeercert())  # type: ignore[arg-type]

    def _create_association(self) -> Association:
        """Not used: `_create_association_for` builds our association classes.

        Upstream: builds `Association` and `AssociationSocket` by name, so neither can
        be subclassed. Upstream change that would remove this: `association_class` and
        `socket_class` attributes on the request handler.
        """
        raise NotImplementedError("PacsRequestHandler builds PacsAssociation instead")

    def _create_association_for(self, pending: PendingConnection, host: str,
                                tls_subject: str | None) -> PacsAssociation:
        # Mirrors RequestHandler._create_association (pynetdicom 3.0) with our classes.
        srv = self.server
        ae = cast(PacsAE, self.ae)
        if ae.event_reactors:
            args = (ae, srv.policy, srv.limits, pending, host, tls_subject,
                    srv.handler_table())
            assoc: PacsAssociation = (build_in_own_thread(*args)
                                      or EventPacsAssociation(*args))
        else:
            assoc = PacsAssociation(ae, srv.policy, srv.limits, pending, host, tls_subject)
        assoc._server = srv
        assoc.move_precheck = srv.prechecks.get(evt.EVT_C_MOVE)
        gate_data_sets(assoc, srv.receive_gate)
        if ae.event_reactors:
            with_mixin(assoc.dimse, RetrieveDimse)
            with_mixin(assoc.dul, ResponseReadingDUL)
            with_mixin(assoc.dimse, EchoDimse)
        else:
            bound_send_queue(assoc)
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
        assoc.acse_timeout = min(srv.limits.negotiation_timeout, srv.limits.acse_timeout)
        sock = GuardedSocket(assoc, client_socket=self.request)
        sock.limits = srv.limits
        assoc.set_socket(sock)
        assoc.acceptor.maximum_length = ae.maximum_pdu_size
        assoc.acceptor.ae_title = srv.ae_title
        assoc.acceptor.address_info = srv.local_info()
        # (The Implementation Class UID is the AE's already: ServiceUser.__init__.)
        assoc.acceptor.implementation_version_name = ae.implementation_version_name
        # Shared, not upstream's per-association deepcopy (0.5-1 ms for ~170 contexts):
        # negotiation only reads them (dicom/server.py SharedContext).
        assoc.acceptor.supported_contexts = srv.contexts
        assoc.requestor.address_info = self.remote
        if not ae.event_reactors:
            for event, handlers in srv._handlers.items():
                if event.is_intervention and handlers:
                    assoc.bind(event, *handlers)
                elif isinstance(event, evt.NotificationEvent):
                    for handler in handlers:
                        assoc.bind(event, handler[0], handler[1])  # type: ignore[index]
        return assoc


class PacsAssociationServer(ThreadedAssociationServer):
    """ThreadedAssociationServer with admission in the accept loop and TLS per thread."""

    # The kernel's accept queue: socketserver's default of 5 drops the SYN of a
    # legitimate client while a flood is being accepted (a 1 s retransmit for it).
    request_queue_size = 512

    def __init__(self, *args: Any, policy: AssociationPolicy, limits: ConnectionLimits,
                 tls: TlsContexts | None, metrics: Any,
                 prechecks: dict[Any, Precheck] | None = None,
                 receive_gate: Callable[[], None] | None = None, **kwargs: Any) -> None:
        self.policy = policy
        self.limits = limits
        self.tls = tls
        self.metrics = metrics
        self.prechecks = prechecks or {}
        self.receive_gate = receive_gate     # see gate_data_sets
        self.negotiations = NegotiationCache()    # dicom/negotiation.py
        kwargs.setdefault("request_handler", PacsRequestHandler)
        super().__init__(*args, **kwargs)

    def connection_ended(self) -> None:
        """A connection this server accepted is closed (a worker's load, dicom/accept.py)."""

    @property
    def active_associations(self) -> list[Association]:
        """Upstream's, without a thread whose association is not built yet."""
        return built_associations(super().active_associations)

    _local_info: AddressInformation | None = None

    def local_info(self) -> AddressInformation:
        """The listener's address as upstream's `RequestHandler.local` builds it for
        every connection (a getaddrinfo each time, 0.05 ms of CPU), built once and
        shared: nothing changes an association's address information."""
        if self._local_info is None:
            self._local_info = AddressInformation.from_tuple(self.server_address)
        return self._local_info

    _handler_table: Handlers | None = None

    def handler_table(self) -> Handlers:
        """The handlers every association starts with (dicom/acceptor.py), built at
        the first association and again after a `bind()` or `unbind()`."""
        if self._handler_table is None:
            self._handler_table = handler_table(self._handlers)  # type: ignore[arg-type]
        return self._handler_table

    def bind(self, event: Any, handler: Callable[..., Any],
             args: list[Any] | None = None) -> None:
        """Upstream's, then the handler table of new associations built again.

        Upstream binds the handler on the running associations and in `_handlers`,
        which each new association binds again; ours start from `handler_table()`, made
        from `_handlers` once: without this a handler bound once the server had served
        an association never reached a later one.
        """
        super().bind(event, handler, args)
        self._handler_table = None

    def unbind(self, event: Any, handler: Callable[..., Any]) -> None:
        """Upstream's, then the handler table of new associations built again (`bind`)."""
        super().unbind(event, handler)
        self._handler_table = None

    _GC_INTERVAL_S = 10.0
    _last_gc = 0.0

    def service_actions(self) -> None:
        """A full garbage collection at most every 10 s, not every 60 connections.

        Upstream: `gc.collect()` in the accept loop every 60 requests (dead association
        threads were not being collected). During a flood of connections that is a full
        collection every few milliseconds, each taking tens of milliseconds with a large
        heap, and nobody is accepted meanwhile.
        Upstream change that would remove this: a time-based collection, or none.
        """
        now = time.monotonic()
        if now - self._last_gc >= self._GC_INTERVAL_S:
            self._last_gc = now
            gc.collect()

    def shutdown_request(self, request: Any) -> None:
        """socketserver's shutdown and close, with the unread bytes dropped so that
        the close is a FIN, not an RST that can discard the last PDU sent
        (dicom/closing.py)."""
        close_socket(request)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Admit the connection as unassociated, or have the accept loop close it."""
        return self.policy.admit_connection(str(client_address[0]))

    def process_request(self, request: Any, client_address: Any) -> None:
        """socketserver's thread per connection; on the event-driven transport the
        association's own (`start_association_thread`)."""
        try:
            if cast(PacsAE, self.ae).event_reactors:
                start_association_thread(self, request, client_address)
            else:
                super().process_request(request, client_address)
        except BaseException:  # no thread: nobody else will give the slot back
            self.policy.connection_done(str(client_address[0]))
            raise
