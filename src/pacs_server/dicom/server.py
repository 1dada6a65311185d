"""The DICOM listener: builds the Application Entity from the registered services,
binds one dispatching handler per DIMSE event, runs and stops the listener.

The listener runs pynetdicom's ThreadedAssociationServer in its own thread; each
association gets a thread of its own, and handlers reach the loop only via LoopBridge.
Nothing here names a service: each one declares itself (dicom/service.py).
"""

from __future__ import annotations

import asyncio
import copy
import errno
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import structlog
from pydicom.uid import (
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import ThreadedAssociationServer

from pacs_server import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from pacs_server.config import AccessControlConfig, Config, LimitsConfig, ServerConfig, TlsConfig
from pacs_server.dicom import runtime
from pacs_server.dicom.accept import BalancedAssociationServer, SharedListen
from pacs_server.dicom.associations import AssociationTracker
from pacs_server.dicom.connection import PacsAssociationServer
from pacs_server.dicom.handler import HandlerGuard
from pacs_server.dicom.policy import AssociationPolicy
from pacs_server.dicom.requestor import PacsAE
from pacs_server.dicom.service import (
    EXTENDED_EVENT,
    DicomService,
    Dispatcher,
    extended_negotiation,
)
from pacs_server.dicom.tls import TlsContexts
from pacs_server.dicom.transport import ConnectionLimits
from pacs_server.errors import StartupError
from pacs_server.metrics import Metrics

log = structlog.get_logger(__name__)

# Every transfer syntax pydicom knows: stored as received, never transcoded on ingest.
# pynetdicom accepts the first of *our* syntaxes that the requestor proposed, so the
# order is our preference: the sender's compressed encoding first (no decompression at
# the modality, the original pixels are kept), then Explicit VR Little Endian (keeps
# VRs of private elements), then the rest of the uncompressed family.
_UNCOMPRESSED_ORDER = [ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                       DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian]
TRANSFER_SYNTAXES = [str(ts) for ts in AllTransferSyntaxes if ts not in _UNCOMPRESSED_ORDER] \
    + [str(ts) for ts in _UNCOMPRESSED_ORDER]

# How often the accept loop looks at its shutdown flag. socketserver's default of 0.5 s
# made every stop (SIGTERM, reload onto another port) wait up to 0.5 s per listener,
# with both listeners shut one after the other; a select() every 50 ms costs nothing.
ACCEPT_POLL_S = 0.05


class SharedContext(PresentationContext):
    """A supported presentation context that is never modified after start-up.

    pynetdicom deep-copies the acceptor's supported contexts for every association. With
    every storage class times every transfer syntax that is ~6,300 UID objects, about
    30-60 ms per association (docs/performance.md). Negotiation only reads these
    contexts and builds new ones for the result, so a copy may share the immutable UIDs.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> SharedContext:
        clone = copy.copy(self)
        clone._transfer_syntax = list(self._transfer_syntax)
        return clone


def shared_contexts(contexts: list[PresentationContext]) -> list[PresentationContext]:
    """The same contexts as SharedContext objects (built through the public setters)."""
    out: list[PresentationContext] = []
    for cx in contexts:
        shared = SharedContext()
        shared.abstract_syntax = cx.abstract_syntax
        for ts in cx.transfer_syntax:
            shared.add_transfer_syntax(ts)
        shared.scu_role = cx.scu_role
        shared.scp_role = cx.scp_role
        out.append(shared)
    return out


def our_ae(s: ServerConfig) -> AE:
    """An AE with our title, implementation identity and timeouts (listener or requestor).

    A `PacsAE`: its outgoing associations send archived files as they are stored
    (dicom/transport.py).
    """
    ae = PacsAE(ae_title=s.ae_title)
    ae.event_reactors = s.transport == "events"
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    ae.acse_timeout = s.acse_timeout
    ae.dimse_timeout = s.dimse_timeout
    ae.network_timeout = s.idle_timeout   # pynetdicom's idle timer aborts silent peers
    ae.connection_timeout = min(s.acse_timeout, 10.0)  # C-MOVE to an unreachable peer
    return ae


class DicomServer:
    """One AE serving the registered services on the plain port, the TLS port, or both;
    `start()` binds, `drain()` ends. Both listeners share one AssociationPolicy, so
    limits and max_associations count associations on either."""

    def __init__(self, cfg: ServerConfig, access: AccessControlConfig,
                 services: Sequence[DicomService], metrics: Metrics,
                 receive_dir: str, limits: LimitsConfig | None = None,
                 tls: TlsConfig | None = None, policy: AssociationPolicy | None = None,
                 shared: SharedListen | None = None) -> None:
        self._cfg = cfg
        self._services = list(services)
        self._receive_dir = receive_dir
        self._metrics = metrics
        self.tracker = AssociationTracker(metrics)
        self._guard = HandlerGuard(self.tracker, metrics)
        self.ae = self._build_ae(cfg)
        self._tls_cfg = tls if tls is not None and tls.enabled else None
        # Certificates are read here, so their errors stop the start-up (exit code 1).
        self.tls = TlsContexts(self._tls_cfg) if self._tls_cfg is not None else None
        self.limits = ConnectionLimits(cfg.negotiation_timeout, cfg.idle_timeout,
                                       cfg.acse_timeout, cfg.max_pdu_size)
        # A worker process is handed the supervisor's (server-wide limits, workers/).
        self.policy = policy or AssociationPolicy(access, limits or LimitsConfig(),
                                                  cfg.max_associations, metrics)
        # A worker process accepts on the supervisor's sockets (dicom/accept.py).
        self._shared = shared
        self._server: ThreadedAssociationServer | None = None
        self._tls_server: ThreadedAssociationServer | None = None
        self._stopped = False

    def _build_ae(self, s: ServerConfig) -> AE:
        ae = our_ae(s)
        # The policy counts established associations (dicom/policy.py); pynetdicom's own
        # check counts every connection, associated or not, so it is set out of reach.
        ae.maximum_associations = 1 << 30
        ae.maximum_pdu_size = s.max_pdu_size
        ae.require_called_aet = s.require_called_ae_title
        for svc in self._services:
            for cx in svc.contexts:
                roles = {k: v for k, v in (("scu_role", cx.scu_role), ("scp_role", cx.scp_role))
                         if v is not None}
                ae.add_supported_context(cx.sop_class, list(cx.transfer_syntaxes or
                                                            TRANSFER_SYNTAXES), **roles)
        return ae

    def reconfigure(self, cfg: Config) -> None:
        """Apply reloaded access control, limits, timeouts and certificates (SIGHUP)."""
        self.policy.reconfigure(cfg.access_control, cfg.limits)
        self.limits.negotiation_timeout = cfg.server.negotiation_timeout
        for srv in self.servers():   # negotiated afresh under the new configuration
            cast(PacsAssociationServer, srv).negotiations.clear()
        if self.tls is not None:
            self.tls.reload(cfg.tls)

    def _dispatcher(self) -> Dispatcher:
        dispatcher = Dispatcher(self._guard.wrap, self._guard.wrap_precheck)
        for svc in self._services:
            for op in svc.operations:
                dispatcher.add(op)
        return dispatcher

    def _receive_gate(self) -> Callable[[], None] | None:
        gates = [svc.receive_gate for svc in self._services if svc.receive_gate is not None]
        if len(gates) > 1:
            raise ValueError("more than one service gates C-STORE data sets")
        return gates[0] if gates else None

    def handlers(self, dispatcher: Dispatcher) -> list[tuple[Any, ...]]:
        """The tracker's notification handlers, one dispatcher per DIMSE event, and the
        services' extended negotiation."""
        out: list[tuple[Any, ...]] = [*self.tracker.handlers()]
        out += [(event, dispatcher.handler_for(event)) for event in dispatcher.events()]
        extended = extended_negotiation(self._services)
        if extended is not None:
            out.append((EXTENDED_EVENT, extended))
        return out

    @property
    def port(self) -> int | None:
        """The plain DICOM port, None when `server.port` is -1."""
        return int(self._server.server_address[1]) if self._server else None

    @property
    def tls_port(self) -> int | None:
        return int(self._tls_server.server_address[1]) if self._tls_server else None

    def start(self) -> int | None:
        """Bind and serve in background threads; returns the plain port (if any)."""
        runtime.receive_into(self._receive_dir)
        s = self._cfg
        try:
            if s.port >= 0:
                self._server = self._serve(s.port, None)
            if self._tls_cfg is not None:
                self._tls_server = self._serve(self._tls_cfg.port, self.tls)
        except StartupError:
            self.stop_accepting()
            raise
        if self._shared is not None:
            self._shared.board.present()
        return self.port

    def _serve(self, port: int, tls: TlsContexts | None) -> ThreadedAssociationServer:
        host = self._cfg.host
        dispatcher = self._dispatcher()
        shared: dict[str, Any] = {"server_class": PacsAssociationServer}
        if self._shared is not None:
            shared = {"server_class": BalancedAssociationServer, "shared": self._shared,
                      "listen_fd": self._shared.fd(tls is not None)}
        try:
            server = self.ae.make_server(
                (host, port), evt_handlers=self.handlers(dispatcher),
                prechecks=dispatcher.prechecks(), receive_gate=self._receive_gate(),
                contexts=shared_contexts(self.ae.supported_contexts),
                policy=self.policy, limits=self.limits, tls=tls, metrics=self._metrics,
                **shared)
        except OSError as exc:
            what = "TLS port" if tls is not None else "port"
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(f"{what} {port} on {host} is already in use") from None
            if exc.errno == errno.EACCES:
                raise StartupError(f"no permission to listen on {host}:{port}") from None
            raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        # What AE.start_server(block=False) does, with our server class.
        name = "AcceptorServer-TLS" if tls is not None else "AcceptorServer"
        threading.Thread(target=server.serve_forever, args=(ACCEPT_POLL_S,), name=name,
                         daemon=True).start()
        self.ae._servers.append(server)
        return server

    def servers(self) -> list[ThreadedAssociationServer]:
        return [srv for srv in (self._server, self._tls_server) if srv is not None]

    @property
    def listening(self) -> bool:
        """Whether a listening socket is open (paused counts: it still answers)."""
        return any(srv.socket is not None and srv.socket.fileno() >= 0
                   for srv in self.servers())

    def active(self) -> list[Any]:
        return [a for srv in self.servers() for a in srv.active_associations]

    def stop_accepting(self) -> None:
        """Close the listening sockets; established associations continue."""
        if self._stopped:
            return
        self._stopped = True
        if self._shared is not None:      # siblings no longer step back for this one
            self._shared.board.leave()
        for srv in self.servers():
            srv.shutdown()
        runtime.stop_receiving_into(self._receive_dir)

    def drain(self, grace_s: float, force: threading.Event | None = None) -> int:
        """Wait up to `grace_s` for associations to end, then abort the rest.

        Returns how many were aborted.
        """
        deadline = time.monotonic() + grace_s
        while self.active() and time.monotonic() < deadline:
            if force is not None and force.is_set():
                break
            time.sleep(0.05)
        stragglers = self.active()
        for assoc in stragglers:
            try:
                assoc.abort()
            except Exception:  # an association ending on its own meanwhile is fine
                pass
        for assoc in stragglers:
            assoc.join(5)
        return len(stragglers)


class DicomListener:
    """The DICOM server as a component: listens at start; at close stops accepting, lets
    associations finish for `shutdown_grace` seconds (`force` set skips the wait), then
    aborts the rest."""

    name = "dicom"

    def __init__(self, server: DicomServer, grace_s: float, force: threading.Event) -> None:
        self.server = server
        self._grace_s = grace_s
        self._force = force
        self.port: int | None = None

    async def start(self) -> None:
        self.port = await asyncio.to_thread(self.server.start)

    async def close(self) -> None:
        await asyncio.to_thread(self.server.stop_accepting)
        active = len(self.server.active())
        if active:
            log.info("server.draining", associations=active, grace_s=self._grace_s)
        aborted = await asyncio.to_thread(self.server.drain, self._grace_s, self._force)
        if aborted:
            log.warning("server.aborted_associations", count=aborted)

    @property
    def tls_port(self) -> int | None:
        return self.server.tls_port

    def reload(self, cfg: Config) -> None:
        self.server.reconfigure(cfg)
