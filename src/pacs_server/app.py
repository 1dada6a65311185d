"""PacsApp: the composition root. Builds every part from the Config and runs the lifecycle.

startup:  storage root check → index engine + migrations → index writer → metrics
          → DICOM listener (last, so nothing is accepted before the archive is ready)
run:      wait for SIGTERM/SIGINT (stop) or SIGHUP (reload)
shutdown: stop accepting → let associations finish for `shutdown_grace` seconds
          (a second signal skips the wait) → abort the rest → drain index writes → close
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable
from typing import Any

import structlog

from pacs_server.config import Config, reloadable_changes
from pacs_server.dicom.bridge import LoopBridge
from pacs_server.dicom.server import DicomServer, Services
from pacs_server.errors import ConfigError, StartupError
from pacs_server.index.engine import create_engine, database_url, migrate
from pacs_server.index.repository import IndexRepository
from pacs_server.logging import set_level
from pacs_server.metrics import Metrics
from pacs_server.services.archive import ArchiveService, Catalog, FileCatalog, IndexCatalog
from pacs_server.services.query import QueryService
from pacs_server.services.retrieve import RetrieveService
from pacs_server.storage.filestore import FileStore

log = structlog.get_logger(__name__)


class PacsApp:
    """The running server. `start()`/`stop()` for embedding and tests, `run()` for the CLI."""

    def __init__(self, cfg: Config, metrics: Metrics | None = None,
                 reload_config: Callable[[], Config] | None = None,
                 use_index: bool = True) -> None:
        self.cfg = cfg
        self.use_index = use_index
        self.metrics = metrics or Metrics()
        self._reload_config = reload_config
        self._force = threading.Event()
        self._stop_requested: asyncio.Event | None = None
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.repo: IndexRepository | None = None
        self.archive: ArchiveService | None = None
        self.dicom: DicomServer | None = None
        self.queries: QueryService | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._engine: Any = None
        self._writer_engine: Any = None

    async def start(self) -> None:
        """Bring everything up; raises StartupError with a one-line reason."""
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        files = FileStore(cfg.storage.directory, fsync=cfg.storage.fsync)
        removed = await asyncio.to_thread(files.prepare)
        if removed:
            log.warning("storage.partial_files_removed", count=removed)
        counts: dict[str, int] = {}
        try:
            catalog: Catalog
            if self.use_index:
                self._engine = create_engine(cfg.database)
                await migrate(self._engine)
                self._writer_engine = create_engine(cfg.database, writer=True)
                self.repo = IndexRepository(self._engine, cfg.database.commit_batch,
                                            on_commit=self.metrics.index_batch.observe,
                                            writer_engine=self._writer_engine)
                await self.repo.start()
                counts = await self.repo.counts()
                catalog = IndexCatalog(self.repo)
            else:
                catalog = FileCatalog(files)
            self.archive = ArchiveService(cfg.storage, files, catalog)
            bridge = LoopBridge(loop, timeout_s=max(cfg.server.dimse_timeout, 30.0))
            services = Services(archive=self.archive, bridge=bridge, metrics=self.metrics)
            if self.repo is not None:
                self.queries = QueryService(self.repo, cfg.query, cfg.server.ae_title)
                services.queries = self.queries
                services.retrieve = RetrieveService(self.queries, files)
            self.dicom = DicomServer(cfg, services)
            if cfg.monitoring.metrics_port >= 0:
                try:
                    self.metrics_port = self.metrics.serve(cfg.monitoring.metrics_host,
                                                           cfg.monitoring.metrics_port)
                except OSError as exc:
                    raise StartupError(
                        f"metrics port {cfg.monitoring.metrics_port} on "
                        f"{cfg.monitoring.metrics_host} cannot be bound: {exc.strerror}") from None
            self.port = await asyncio.to_thread(self.dicom.start)
            self._sweeper = asyncio.create_task(self._sweep_incoming(files), name="sweeper")
        except BaseException:
            await self._close_backends()
            raise
        log.info("server.started", ae_title=cfg.server.ae_title, host=cfg.server.host,
                 port=self.port, metrics_port=self.metrics_port,
                 storage=str(files.root),
                 database=_safe_url(database_url(cfg.database)) if self.use_index else None,
                 naming=cfg.storage.naming, duplicate_policy=cfg.storage.duplicate_policy,
                 **counts)

    async def stop(self) -> None:
        """Stop accepting, drain, abort stragglers, flush the index, close everything."""
        if self.dicom is not None:
            await asyncio.to_thread(self.dicom.stop_accepting)
            active = len(self.dicom.active())
            if active:
                log.info("server.draining", associations=active,
                         grace_s=self.cfg.server.shutdown_grace)
            aborted = await asyncio.to_thread(self.dicom.drain, self.cfg.server.shutdown_grace,
                                              self._force)
            if aborted:
                log.warning("server.aborted_associations", count=aborted)
            self.dicom = None
        await self._close_backends()
        log.info("server.stopped")

    async def _sweep_incoming(self, files: FileStore) -> None:
        """Every minute, drop partial receive files of senders that went away."""
        max_age = max(self.cfg.server.idle_timeout, self.cfg.server.dimse_timeout) + 60
        while True:
            await asyncio.sleep(60)
            removed = await asyncio.to_thread(files.sweep_incoming, max_age)
            if removed:
                log.warning("storage.stale_partial_files_removed", count=removed)

    async def _close_backends(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self.metrics.stop()
        if self.repo is not None:
            await self.repo.close()
            self.repo = None
        for engine in (self._writer_engine, self._engine):
            if engine is not None:
                await engine.dispose()
        self._engine = self._writer_engine = None

    async def run(self) -> None:
        """Start, serve until SIGTERM/SIGINT, then stop. SIGHUP reloads the config."""
        loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        await self.start()
        installed = []
        for sig, handler in ((signal.SIGTERM, self._on_stop_signal),
                             (signal.SIGINT, self._on_stop_signal),
                             (signal.SIGHUP, self._on_reload_signal)):
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

    def _on_reload_signal(self, sig: int) -> None:
        self.reload()

    def reload(self) -> bool:
        """Re-read the config; apply reloadable changes, log the ones needing a restart.

        An invalid or unchanged file leaves the running configuration untouched.
        """
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
            return False
        if cold:
            log.warning("config.restart_required", keys=cold)
        if hot:
            # Apply only reloadable sections; others keep their running values.
            self.cfg = _merge_hot(self.cfg, new)
            set_level(self.cfg.logging.level)
            if self.archive is not None:
                self.archive.reconfigure(self.cfg.storage)
            if self.queries is not None:
                self.queries.reconfigure(self.cfg.query)
            if self.dicom is not None:
                self.dicom.apply_access_control(self.cfg)
                self.dicom.reconfigure(self.cfg)
            log.info("config.reloaded", keys=hot)
        return bool(hot)


def _merge_hot(old: Config, new: Config) -> Config:
    """`old` with every reloadable field taken from `new`."""
    import dataclasses

    from pacs_server.config import iter_fields

    sections: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for key, fld, _ in iter_fields():
        if not fld.metadata.get("reload"):
            continue
        if "." in key:
            section, name = key.split(".", 1)
            sections.setdefault(section, {})[name] = getattr(getattr(new, section), name)
        else:
            top[key] = getattr(new, key)
    replaced = {s: dataclasses.replace(getattr(old, s), **vals) for s, vals in sections.items()}
    return dataclasses.replace(old, **replaced, **top)


def _safe_url(url: str) -> str:
    """The database URL without its password, for logs."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url
