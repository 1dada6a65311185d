"""PacsApp: the composition root. Builds every part from the Config and runs the lifecycle.

startup:  library settings → storage root check → index (engines, migrations, writer)
          → reconcile the placement journal with the index → services → audit log, event
          feed, admin state, HTTP side → Storage Commitment delivery → DICOM listener (last,
          so nothing is accepted before the archive is ready) → housekeeping; then `ready`
          is set and systemd told READY=1
run:      wait for SIGTERM/SIGINT (stop) or SIGHUP (reopen the audit file, reload)
shutdown: the components close in reverse order (an AsyncExitStack): housekeeping stops,
          the listener stops accepting and drains for `shutdown_grace` seconds (a second
          signal skips the wait), the HTTP side stops, the audit file closes, queued
          index writes commit, engines close

Components have `start()` and `close()`; the ones that take a reloaded configuration
subscribe to it (`_subscribe`), so SIGHUP reaches each of them without a list here.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import ssl
import threading
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import structlog

from pacs_server.audit import AuditLog
from pacs_server.config import Config, PeerConfig, merge_reloadable, reloadable_changes
from pacs_server.control import (
    AdminRefresh,
    DicomSide,
    LocalDicom,
    ServerControl,
    ServerParts,
)
from pacs_server.dicom import (
    commitment,
    echo,
    find,
    get,
    move,
    mpps,
    runtime,
    store,
    tls,
    worklist,
)
from pacs_server.dicom.accept import SharedListen
from pacs_server.dicom.bridge import LoopBridge
from pacs_server.dicom.commitment_delivery import CommitmentDelivery
from pacs_server.dicom.policy import AssociationPolicy
from pacs_server.dicom.server import DicomListener, DicomServer
from pacs_server.dicom.service import DicomService
from pacs_server.errors import ConfigError
from pacs_server.events import EventHub
from pacs_server.identity import process_identity
from pacs_server.index.lifecycle import IndexComponent
from pacs_server.index.repository import IndexRepository
from pacs_server.logging import set_level
from pacs_server.metrics import Metrics
from pacs_server.periodic import PeriodicTask
from pacs_server.services.archive import ArchiveService, Catalog, FileCatalog, IndexCatalog
from pacs_server.services.commitment import CommitmentService
from pacs_server.services.dicomweb import DicomWeb
from pacs_server.services.maintenance import Maintenance
from pacs_server.services.mpps import MppsService
from pacs_server.services.query import QueryService
from pacs_server.services.reconcile import ArchiveReconciler, StaleIntentSweeper
from pacs_server.services.retrieve import RetrieveService
from pacs_server.services.worklist import WorklistService
from pacs_server.services.worklist_retention import WorklistRetention
from pacs_server.sop_classes import resolve_storage_classes
from pacs_server.storage.filestore import FileStore
from pacs_server.storage.housekeeping import IncomingSweeper
from pacs_server.systemd import notify
from pacs_server.web.site import HttpSide
from pacs_server.web.viewer import ViewerSite

log = structlog.get_logger(__name__)


class Component(Protocol):
    """A part of the server with a lifecycle."""

    name: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...


C = TypeVar("C", bound=Component)
P = TypeVar("P", bound=PeriodicTask)


@dataclass(frozen=True)
class Role:
    """Which part of the server this process is (`server.workers`, workers/).

    `server`: the single process, everything. `supervisor`: index, migrations,
    housekeeping and the HTTP side, no DICOM listener; its DICOM side is `fleet`, every
    worker. `worker`: a DICOM engine accepting on the supervisor's listening sockets
    (`listen`, dicom/accept.py) whose admission is the supervisor's `policy` and whose
    association events also go to `events` (the supervisor's live feed, while someone
    watches); no HTTP side, no migrations, no housekeeping. Every role
    empties and reconciles only its own receive directory and journal (identity.py).
    """

    kind: Literal["server", "supervisor", "worker"] = "server"
    policy: AssociationPolicy | None = None
    fleet: DicomSide | None = None
    events: Callable[[str, dict[str, Any]], None] | None = None
    listen: SharedListen | None = None


class PacsApp:
    """The running server. `start()`/`stop()` for embedding and tests, `run()` for the CLI.

    Args:
        cfg: the configuration, built once by `load_config`.
        metrics: the instruments (tests pass one with a fresh registry).
        reload_config: builds the new Config on SIGHUP (re-reads the file).
        use_index: False runs without the SQL index (store_scp without --index-db):
            C-STORE only, no Query/Retrieve.
    """

    def __init__(self, cfg: Config, metrics: Metrics | None = None,
                 reload_config: Callable[[], Config] | None = None,
                 use_index: bool = True, role: Role | None = None) -> None:
        self.cfg = cfg
        self.role = role or Role()
        self.use_index = use_index
        self.metrics = metrics or Metrics()
        self.ready = asyncio.Event()
        self.port: int | None = None
        self.tls_port: int | None = None
        self.metrics_port: int | None = None
        self.archive: ArchiveService | None = None
        self._reload_config = reload_config
        self._force = threading.Event()
        self._stop_requested: asyncio.Event | None = None
        self._stack: AsyncExitStack | None = None
        self._subscribers: list[Callable[[Config], None]] = []
        self._refreshers: list[Callable[[Config], None]] = []
        self._index: IndexComponent | None = None
        self._listener: DicomListener | None = None
        self._commitments: CommitmentDelivery | None = None
        self.control: ServerControl | None = None
        self._audit: AuditLog | None = None
        self.identity = process_identity(cfg.server.node_name)
        self._services: list[str] = []
        self._storage_root = ""

    # ------------------------------------------------------------------ parts
    @property
    def repo(self) -> IndexRepository | None:
        """The index while the server runs with one."""
        return self._index.repo if self._index is not None else None

    def _peer_tls(self) -> ssl.SSLContext | None:
        """The client context for peers marked `tls: true` (None: TLS is not set up)."""
        server = self.dicom
        return server.tls.client if server is not None and server.tls is not None else None

    @property
    def dicom(self) -> DicomServer | None:
        """The DICOM server while it listens."""
        return self._listener.server if self._listener is not None else None

    def dicom_services(self, archive: ArchiveService, bridge: LoopBridge,
                       queries: QueryService | None,
                       retrieve: RetrieveService | None,
                       steps: MppsService | None = None,
                       worklists: WorklistService | None = None) -> list[DicomService]:
        """The DICOM services this server registers: one line per service."""
        cfg, metrics = self.cfg, self.metrics
        services = [
            echo.service(),
            store.service(resolve_storage_classes(cfg.storage.accepted_sop_classes),
                          archive, bridge, metrics),
        ]
        if queries is not None and retrieve is not None:
            services += [
                find.service(queries, bridge, metrics),
                get.service(retrieve, bridge, metrics, lambda: self.cfg.retrieve.transcode),
                move.service(retrieve, bridge, self._peer, cfg.server.max_pdu_size, metrics,
                             lambda: self.cfg.retrieve.transcode, tls=self._peer_tls),
            ]
        if worklists is not None:
            services.append(worklist.service(worklists, bridge))
        if steps is not None:
            services.append(mpps.service(steps, bridge))
        if self._commitments is not None:
            services.append(commitment.service(self._commitments, bridge))
        return services

    def _peer(self, ae_title: str) -> PeerConfig | None:
        """A C-MOVE destination: the config file's, else one added through the API."""
        if self.control is not None:
            return self.control.peer(ae_title)
        return self.cfg.peer(ae_title)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Bring everything up; raises StartupError with a one-line reason."""
        cfg = self.cfg
        runtime.configure_libraries()
        self._stack = AsyncExitStack()
        # The longest a receive file goes untouched, or a store holds its placement
        # intent, while its transfer is alive (the bridge's timeout is below it): a
        # sibling's file or intent older than this is a leftover (docs/architecture.md).
        in_flight_s = max(cfg.server.idle_timeout, cfg.server.dimse_timeout) + 60
        bridge_timeout = max(cfg.server.dimse_timeout, 30.0)
        try:
            files = FileStore(cfg.storage.directory, fsync=cfg.storage.fsync,
                              identity=self.identity)
            self._stack.callback(files.release)
            self._storage_root = str(files.root)
            worker = self.role.kind == "worker"
            # Only this process's own receive directory: a sibling's is swept by age.
            removed = await asyncio.to_thread(files.prepare)
            removed += await asyncio.to_thread(files.sweep_incoming, in_flight_s)
            if removed:
                log.warning("storage.partial_files_removed", count=removed)
            catalog: Catalog = FileCatalog(files)
            queries = retrieve = steps = worklists = None
            if self.use_index:
                self._index = await self._start(IndexComponent(
                    cfg.database, self.metrics, self.identity, migrations=not worker))
                catalog = IndexCatalog(self._index.repo)
                queries = QueryService(self._index.repo, cfg.query, cfg.server.ae_title)
                self._subscribe(lambda c: queries.reconfigure(c.query))
                retrieve = RetrieveService(queries, files)
                worklists = WorklistService(self._index.worklist)
                # The worklist items follow the performed steps (services/mpps.py).
                steps = MppsService(self._index.steps, worklist=self._index.worklist)
            # Placements a crash left between the file and its index row, before the
            # listener accepts anything: every process settles its own journal, and a
            # sibling's once it is stale.
            await self._start(ArchiveReconciler(files, catalog, cfg.storage, in_flight_s))
            self.archive = archive = ArchiveService(cfg.storage, files, catalog,
                                                    in_flight_s, wait_s=bridge_timeout)
            self._subscribe(lambda c: archive.reconfigure(c.storage))
            bridge = LoopBridge(asyncio.get_running_loop(), timeout_s=bridge_timeout)
            if self.role.fleet is not None:
                fleet = self.role.fleet
                self._subscribe(lambda c: fleet.policy.reconfigure(c.access_control, c.limits))
                await self._start_operations(fleet, archive, queries, bridge)
            else:
                await self._start_dicom(files, archive, queries, retrieve, steps, worklists,
                                        bridge)
            if not worker:      # the workers' supervisor runs it for them
                await self._start_housekeeping(files, catalog, in_flight_s)
        except BaseException:
            await self._close()
            raise
        self.ready.set()
        if self.role.kind == "server":
            notify("READY=1")
            await self.log_started()

    @property
    def services(self) -> list[str]:
        """The names of the DICOM services this process listens for (none before the
        listener starts, and none in the supervisor: its workers serve them)."""
        return list(self._services)

    async def log_started(self, **fields: object) -> None:
        """The one `server.started` line (the supervisor's once every worker listens)."""
        cfg = self.cfg
        log.info("server.started", ae_title=cfg.server.ae_title, identity=self.identity,
                 host=cfg.server.host,
                 port=self.port, tls_port=self.tls_port, metrics_port=self.metrics_port,
                 storage=self._storage_root,
                 database=self._index.url if self._index else None,
                 naming=cfg.storage.naming, duplicate_policy=cfg.storage.duplicate_policy,
                 **{"services": self._services, **fields},
                 **(await self._index.repo.counts() if self._index else {}))

    async def _start_housekeeping(self, files: FileStore, catalog: Catalog,
                                  in_flight_s: float) -> None:
        """Sweeps and retention: each runs in one process of those sharing the index."""
        cfg = self.cfg
        await self._start(self._singleton(IncomingSweeper(files, in_flight_s)))
        if self._index is not None:
            stale = await self._start(self._singleton(
                StaleIntentSweeper(files, catalog, cfg.storage, in_flight_s)))
            self._subscribe(lambda c: stale.reconfigure(c.storage))
            retention = await self._start(self._singleton(
                WorklistRetention(self._index.worklist, cfg.worklist)))
            self._subscribe(lambda c: retention.reconfigure(c.worklist))

    async def _start_dicom(self, files: FileStore, archive: ArchiveService,
                           queries: QueryService | None, retrieve: RetrieveService | None,
                           steps: MppsService | None, worklists: WorklistService | None,
                           bridge: LoopBridge) -> None:
        """The DICOM engine: services, listener(s), Storage Commitment delivery."""
        cfg = self.cfg
        if self._index is not None:
            self._commitments = self._commitment_delivery(files, bridge)
        services = self.dicom_services(archive, bridge, queries, retrieve, steps, worklists)
        self._services = [s.name for s in services]
        server = DicomServer(cfg.server, cfg.access_control, services, self.metrics,
                             str(files.incoming), limits=cfg.limits, tls=cfg.tls,
                             policy=self.role.policy, shared=self.role.listen)
        await self._start_operations(LocalDicom(server, archive), archive, queries, bridge)
        if self._commitments is not None:
            # Before the listener, so that it closes after the associations ended.
            await self._start(self._commitments)
        self._listener = await self._start(
            DicomListener(server, cfg.server.shutdown_grace, self._force))
        # Every SIGHUP, changed or not: certificates are re-read from the same paths.
        self._subscribe(self._listener.reload, every_reload=True)
        self.port = self._listener.port
        self.tls_port = self._listener.tls_port
        assert self.control is not None
        self.control.dicom_port, self.control.tls_port = self.port, self.tls_port

    def _commitment_delivery(self, files: FileStore, bridge: LoopBridge) -> CommitmentDelivery:
        """Storage Commitment: the use cases over the index and the report sender."""
        assert self._index is not None
        cfg = self.cfg
        service = CommitmentService(
            self._index.commitments, self._index.repo, files,
            resolve_storage_classes(cfg.storage.accepted_sop_classes), cfg.commitment)
        self._subscribe(lambda c: service.reconfigure(c.commitment))
        return CommitmentDelivery(service, bridge, cfg.server, self._peer, self.metrics,
                                  gate=self._index.leases.acquire, owner=self.identity)

    async def _start_operations(self, dicom: DicomSide, archive: ArchiveService,
                                queries: QueryService | None, bridge: LoopBridge) -> None:
        """The audit log, the event feed, the admin state and the HTTP side."""
        assert self._stack is not None
        cfg = self.cfg
        self._audit = audit = AuditLog(cfg.logging.audit_file, cfg.server.ae_title)
        self._stack.callback(audit.close)
        hub = EventHub(asyncio.get_running_loop(), on_watched=dicom.watched)
        dicom.listen(hub.publish)
        if self.role.kind != "supervisor":     # each worker audits its own associations
            dicom.listen(audit.association_event)
        if self.role.events is not None:       # a worker: to the supervisor's live feed
            dicom.listen(self.role.events)
        parts = ServerParts(dicom, archive, self.metrics, hub, audit=audit.admin_call,
                            audit_web=audit.web_request)
        if self._index is not None and queries is not None:
            index = self._index
            parts.repo, parts.queries = index.repo, queries
            parts.admin, parts.inventory = index.admin, index.inventory
            parts.maintenance = Maintenance(archive, index.repo, index.admin, index.inventory,
                                            bridge.run)
            if cfg.dicomweb.enabled:
                parts.dicomweb = DicomWeb(
                    queries, index.repo, archive, bridge.run,
                    resolve_storage_classes(cfg.storage.accepted_sop_classes),
                    lambda: self.cfg.dicomweb)
        self.control = control = ServerControl(parts, cfg)
        await control.load()
        if self._index is not None:
            await self._start(AdminRefresh(control))
        self._subscribe(control.reconfigure)
        self._subscribe(lambda c: audit.reopen(c.logging.audit_file))
        if cfg.monitoring.serves:
            viewer = (ViewerSite(Path(cfg.viewer.path), cfg.viewer.version, cfg.dicomweb.root)
                      if cfg.viewer.enabled else None)
            https = tls.https_context(cfg.tls) if cfg.monitoring.https else None
            http = await self._start(HttpSide(
                control, cfg.monitoring.bind_host, cfg.monitoring.metrics_port,
                cfg.dicomweb,
                lambda route, status: self.metrics.http_requests.labels(
                    route, str(status)).inc(), ssl_context=https, viewer=viewer))
            self.metrics_port = control.http_port = http.port

    def _singleton(self, task: P) -> P:
        """A housekeeping job that runs in one process of those sharing the index."""
        if self._index is not None:
            task.singleton(self._index.leases.acquire)
        return task

    async def _start(self, component: C) -> C:
        assert self._stack is not None
        await component.start()
        self._stack.push_async_callback(component.close)
        return component

    def _subscribe(self, on_reload: Callable[[Config], None],
                   every_reload: bool = False) -> None:
        """Call `on_reload(cfg)` after a reload that changed something; with
        `every_reload`, after every reload request (for parts that re-read files the
        configuration names, such as certificates, whose contents may have changed)."""
        (self._refreshers if every_reload else self._subscribers).append(on_reload)

    async def stop(self) -> None:
        """Stop accepting, drain, abort stragglers, flush the index, close everything."""
        if self.role.kind == "server":     # the supervisor says it once, for all
            notify("STOPPING=1")
        await self._close()
        log.info("server.stopped")

    async def _close(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
        self._listener = None
        self._index = None
        self._commitments = None
        self.control = None
        self._subscribers.clear()
        self._refreshers.clear()
        self.ready.clear()

    def on_close(self, callback: Callable[[], object]) -> None:
        """Call `callback()` first when the app closes (the parts started after it)."""
        assert self._stack is not None
        self._stack.callback(callback)

    async def run(self, started: Callable[[], Awaitable[None]] | None = None) -> None:
        """Start, serve until SIGTERM/SIGINT, then stop. SIGHUP reloads the config.

        `started()` is awaited once the server is up (a worker reports to its supervisor).
        """
        loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        await self.start()
        # What start-up loaded (modules, pydicom's dictionaries, the SOP class tables)
        # lives as long as the process: out of the full collections the accept loop
        # runs every 10 s (dicom/connection.py), each ~80 ms of CPU over its ~127k
        # objects, up to a fifth of a 500-instance C-GET's CPU when one lands in it.
        gc.collect()
        gc.freeze()
        if started is not None:
            try:
                await started()
            except BaseException:
                await self.stop()
                raise
        installed: list[signal.Signals] = []
        for sig, handler in ((signal.SIGTERM, self._on_stop_signal),
                             (signal.SIGINT, self._on_stop_signal),
                             (signal.SIGHUP, lambda _sig: self.hangup())):
            loop.add_signal_handler(sig, handler, sig)
            installed.append(sig)
        try:
            await self._stop_requested.wait()
            await self.stop()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    def request_stop(self) -> None:
        """Ask a running `run()` to shut down (as SIGTERM does)."""
        self._on_stop_signal(signal.SIGTERM)

    def _on_stop_signal(self, sig: int) -> None:
        assert self._stop_requested is not None
        if self._stop_requested.is_set():
            # Second signal: skip the grace period.
            log.warning("server.forced_stop", signal=signal.Signals(sig).name)
            self._force.set()
            return
        log.info("server.stopping", signal=signal.Signals(sig).name)
        self._stop_requested.set()

    # ------------------------------------------------------------------ reload
    def hangup(self, new: Config | None = None) -> bool:
        """SIGHUP: reopen the audit file (log rotation), then reload the config (`new`,
        already read and checked by the caller, or re-read here)."""
        if self._audit is not None:
            self._audit.reopen()
        if self.control is not None:
            self.control.reconfigure(self.cfg)     # a token file may have changed
        return self.reload(new)

    def reload(self, new: Config | None = None) -> bool:
        """Apply a new configuration: `new`, or the file re-read by `reload_config`.

        Reloadable changes reach every subscribed component; changes that need a
        restart are logged and not applied. An invalid or unchanged configuration
        leaves the running one untouched. Returns whether anything was applied.
        """
        if new is None:
            if self._reload_config is None:
                log.info("config.reload_unavailable")
                return False
            try:
                new = self._reload_config()
            except ConfigError as exc:
                log.error("config.reload_rejected", error=str(exc))
                return False
        hot, cold = reloadable_changes(self.cfg, new)
        if not hot and not cold:
            log.info("config.reload_unchanged", source=new.source)
        if cold:
            log.warning("config.restart_required", keys=cold)
        if hot:
            self.cfg = merge_reloadable(self.cfg, new)
            set_level(self.cfg.logging.level)
            for on_reload in self._subscribers:
                on_reload(self.cfg)
            log.info("config.reloaded", keys=hot)
        for refresh in self._refreshers:
            refresh(self.cfg)
        return bool(hot)
