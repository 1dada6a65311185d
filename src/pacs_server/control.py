"""ServerControl: the running server as the HTTP side sees it (web/ports.py `Control`).

Built by the composition root from the parts it already has (the DICOM server, its
tracker and association policy, the index, the archive, the query service, the
metrics); nothing here has logic of its own beyond putting those calls together and
validating what the admin API hands in. `web/` never imports this module: it gets the object.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from pacs_server import __version__
from pacs_server.admin_token import read_token
from pacs_server.config import AllowedAE, Config, PeerConfig, is_valid_ae_title
from pacs_server.dicom.policy import AccessEntry, AssociationPolicy
from pacs_server.dicom.server import DicomServer
from pacs_server.errors import (
    ConflictingRequest,
    InvalidRequest,
    NotFound,
    ServiceUnavailable,
    StartupError,
)
from pacs_server.events import EventHub
from pacs_server.index.admin import AdminRepository
from pacs_server.index.backup import backup_sqlite
from pacs_server.index.inventory import Inventory
from pacs_server.index.repository import IndexRepository
from pacs_server.metrics import Metrics
from pacs_server.periodic import PeriodicTask
from pacs_server.services.archive import ArchiveService
from pacs_server.services.browse import browse
from pacs_server.services.dicomweb import DicomWeb
from pacs_server.services.maintenance import Maintenance
from pacs_server.services.query import QueryService
from pacs_server.viewer_fetch import viewer_link

log = structlog.get_logger(__name__)

HEALTH_TIMEOUT_S = 1.0
COUNTS_TTL_S = 30.0         # /metrics and /status share one set of COUNT(*) queries
ADMIN_REFRESH_S = 5.0       # the API's AE titles and peers, re-read from the index
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,253})$")


def check_host(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        if _HOST.match(host):
            return host
    raise InvalidRequest(f"host: {host!r} is not an IP address or host name")


class DicomSide(Protocol):
    """The DICOM engine(s) as the control sees them: this process's (`LocalDicom`) or
    every worker's (workers/fleet.py). Association ids are strings ("7", or "2-7" for
    association 7 of worker 2)."""

    policy: AssociationPolicy

    @property
    def listening(self) -> bool: ...

    async def snapshot(self) -> list[dict[str, Any]]: ...

    async def totals(self) -> dict[str, int]:
        """The tracker's totals and the archive's store counts."""

    async def detail(self, assoc_id: str) -> dict[str, Any] | None: ...

    async def abort(self, assoc_id: str) -> bool: ...

    async def access_changed(self) -> None:
        """The admin API's AE titles or peers changed (the policy has them already)."""

    def listen(self, listener: Callable[[str, dict[str, Any]], None]) -> None: ...

    def watched(self, on: bool) -> None:
        """The live feed's first watcher came (True) or its last one went (False)."""

    async def watch_settled(self) -> None:
        """Returns once every engine applied the latest `watched` (its events reach the
        feed from then on)."""


class LocalDicom:
    """The DicomSide of the single process: its DicomServer and ArchiveService."""

    def __init__(self, server: DicomServer, archive: ArchiveService) -> None:
        self._server, self._archive = server, archive
        self.policy = server.policy

    @property
    def listening(self) -> bool:
        return self._server.listening

    async def snapshot(self) -> list[dict[str, Any]]:
        return self._server.tracker.snapshot()

    async def totals(self) -> dict[str, int]:
        return {**self._server.tracker.totals(), **store_totals(self._archive)}

    async def detail(self, assoc_id: str) -> dict[str, Any] | None:
        return self._server.tracker.detail(int(assoc_id)) if assoc_id.isdigit() else None

    async def abort(self, assoc_id: str) -> bool:
        # pynetdicom's abort() sleeps ~0.1 s while the A-ABORT goes out: not on the loop.
        return assoc_id.isdigit() and await asyncio.to_thread(
            self._server.tracker.abort, int(assoc_id))

    async def access_changed(self) -> None:
        pass

    def listen(self, listener: Callable[[str, dict[str, Any]], None]) -> None:
        self._server.tracker.listen(listener)

    def watched(self, on: bool) -> None:
        pass        # the tracker calls the feed in this process; it is cheap unwatched

    async def watch_settled(self) -> None:
        pass


def store_totals(archive: ArchiveService) -> dict[str, int]:
    stats = archive.stats
    return {"instances_stored": stats.stored, "bytes_stored": stats.bytes,
            "duplicates": stats.duplicates, "store_failures": stats.failed}


@dataclass
class ServerParts:
    """What the composition root hands over; index parts are None without an index."""

    dicom: DicomSide
    archive: ArchiveService
    metrics: Metrics
    events: EventHub
    repo: IndexRepository | None = None
    admin: AdminRepository | None = None
    inventory: Inventory | None = None
    queries: QueryService | None = None
    maintenance: Maintenance | None = None
    dicomweb: DicomWeb | None = None
    audit: Callable[..., None] = field(default=lambda *a, **k: None)
    audit_web: Callable[..., None] = field(default=lambda *a, **k: None)


class ServerControl:
    """Implements web.ports.Control over the server's parts."""

    def __init__(self, parts: ServerParts, cfg: Config) -> None:
        self._p = parts
        self._cfg = cfg
        self._token = read_token(cfg)
        self._started = time.monotonic()
        self.dicom_port: int | None = None
        self.tls_port: int | None = None
        self.http_port: int | None = None
        self._api_peers: dict[str, PeerConfig] = {}
        self._counts: tuple[float, int, dict[str, int]] = (0.0, -1, {})

    # ----------------------------------------------------------------- lifecycle
    async def load(self) -> None:
        """Apply the API's AE titles and peers kept in the index (at start)."""
        await self.refresh_access()

    def reconfigure(self, cfg: Config) -> None:
        """SIGHUP: the new token (re-read from its file) and config entries; a token
        file that cannot be read keeps the old token."""
        self._cfg = cfg
        try:
            self._token = read_token(cfg)
        except StartupError as exc:
            log.error("admin.token_reload_failed", error=str(exc))

    def peer(self, ae_title: str) -> PeerConfig | None:
        """A C-MOVE destination: the config file's first, then the API's."""
        return self._cfg.peer(ae_title) or self._api_peers.get(ae_title.strip())

    # ----------------------------------------------------------------- open views
    def token(self) -> str:
        return self._token

    def audit(self, action: str, outcome: str, **fields: Any) -> None:
        self._p.audit(action, outcome, **fields)

    def dicomweb(self) -> DicomWeb | None:
        return self._p.dicomweb

    def audit_web(self, service: str, status: int, **fields: Any) -> None:
        self._p.audit_web(service, status, **fields)

    async def status(self) -> dict[str, Any]:
        p, cfg = self._p, self._cfg
        storage: dict[str, Any] = {"directory": str(p.archive.files.root),
                                   "free_bytes": await asyncio.to_thread(
                                       p.archive.files.free_bytes)}
        reason = await self._index_problem()
        if p.repo is not None and reason is None:
            counts = await self._index_counts()
            storage.update(bytes=counts["bytes"], instances=counts["instances"])
        return {
            "version": __version__, "uptime_s": round(time.monotonic() - self._started, 1),
            "ae_title": cfg.server.ae_title,
            "ports": {"dicom": self.dicom_port, "dicom_tls": self.tls_port,
                      "http": self.http_port},
            "state": "paused" if p.dicom.policy.paused else "accepting",
            "paused": p.dicom.policy.paused,
            "associations": await p.dicom.snapshot(),
            "totals": await p.dicom.totals(),
            "storage": storage,
            "database": {"healthy": reason is None, **({"error": reason} if reason else {})},
        }

    async def health(self) -> str | None:
        if not self._p.dicom.listening:
            return "DICOM listener is not accepting connections"
        reserve = self._p.archive.config.min_free_bytes
        if reserve > 0:
            free = await asyncio.to_thread(self._p.archive.files.free_bytes)
            if free < reserve:
                # C-STORE answers 0xA700 meanwhile (ArchiveService.check_free_space).
                return f"archive below storage.min_free_bytes: {free} bytes free"
        return await self._index_problem()

    async def _index_problem(self) -> str | None:
        inventory = self._p.inventory
        if inventory is None:
            return None
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_S):
                await inventory.ping()
        except TimeoutError:
            return f"index did not answer within {HEALTH_TIMEOUT_S:g} s"
        except Exception as exc:
            first = str(getattr(exc, "orig", None) or exc).strip().splitlines() or ["?"]
            return f"index unavailable: {first[0][:200]}"
        return None

    async def _index_counts(self) -> dict[str, int]:
        """Rows per level and bytes: counted again when an instance was stored since, or
        after COUNTS_TTL_S (a scrape every few seconds of an idle server must not count
        a large index each time)."""
        at, stored, counts = self._counts
        now_stored = (await self._p.dicom.totals())["instances_stored"]
        if now_stored != stored or time.monotonic() - at > COUNTS_TTL_S:
            assert self._p.repo is not None
            counts = await self._p.repo.counts()
            self._counts = (time.monotonic(), now_stored, counts)
        return dict(counts)

    async def metrics(self) -> tuple[bytes, str]:
        p = self._p
        counts: dict[str, int] = {}
        if p.repo is not None and await self._index_problem() is None:
            counts = await self._index_counts()
        p.metrics.set_inventory(counts, await asyncio.to_thread(p.archive.files.free_bytes))
        return p.metrics.exposition()

    # ----------------------------------------------------------------- associations
    async def associations(self) -> list[dict[str, Any]]:
        return await self._p.dicom.snapshot()

    async def association(self, assoc_id: str) -> dict[str, Any] | None:
        return await self._p.dicom.detail(assoc_id)

    async def disconnect(self, assoc_id: str) -> bool:
        return await self._p.dicom.abort(assoc_id)

    def pause(self) -> None:
        self._p.dicom.policy.pause()

    def resume(self) -> None:
        self._p.dicom.policy.resume()

    def events(self) -> AsyncIterator[dict[str, Any]]:
        return self._p.events.subscribe()

    async def events_ready(self) -> None:
        """A feed from `events()` gets every engine's events once this returns (with
        worker processes: each worker acknowledged that it forwards them)."""
        await self._p.dicom.watch_settled()

    # ----------------------------------------------------------------- index views
    def _need(self, part: Any) -> Any:
        if part is None:
            raise ServiceUnavailable("this server runs without an index")
        return part

    async def browse(self, level: str, filters: dict[str, str], offset: int,
                     limit: int) -> dict[str, Any]:
        page = await browse(self._need(self._p.queries), level, filters, offset, limit)
        if level == "studies" and self._cfg.viewer.enabled:
            # Relative: the server does not know the name clients reach it by.
            for row in page["rows"]:
                row["viewer_url"] = viewer_link(row["StudyInstanceUID"])
        return page

    async def stats(self) -> dict[str, Any]:
        repo: IndexRepository = self._need(self._p.repo)
        inventory: Inventory = self._need(self._p.inventory)
        return {"counts": await repo.counts(), **await inventory.statistics()}

    def verify(self, repair: bool) -> AsyncIterator[dict[str, Any]]:
        return self._need(self._p.maintenance).verify(repair)  # type: ignore[no-any-return]

    def reindex(self, directory: str) -> AsyncIterator[dict[str, Any]]:
        return self._need(self._p.maintenance).reindex(directory)  # type: ignore[no-any-return]

    async def backup(self, destination: str) -> dict[str, Any]:
        self._need(self._p.repo)
        started = time.monotonic()
        result = await asyncio.to_thread(backup_sqlite, self._cfg.database, destination)
        return {"destination": destination, **result,
                "seconds": round(time.monotonic() - started, 3)}

    # ----------------------------------------------------------------- AE titles, peers
    async def access(self, action: str, ae_title: str = "", host: str = "") -> Any:
        admin: AdminRepository = self._need(self._p.admin)
        configured = _configured_titles(self._cfg)
        if action == "list":
            return ([{**entry, "origin": "config"} for entry in configured.values()]
                    + [{"ae_title": r.ae_title, "host": r.host, "origin": "api"}
                       for r in await admin.ae_titles()])
        ae_title = _ae_title(ae_title)
        host = _ip_address(host) if host else ""
        if ae_title in configured:
            raise ConflictingRequest(f"{ae_title!r} is listed in the config file "
                                     f"({self._cfg.source}); change it there")
        if action == "add":
            await admin.add_ae_title(ae_title, host)
        elif not await admin.remove_ae_title(ae_title, host):
            raise NotFound(f"{ae_title!r} was not added through the API"
                           + (f" for host {host}" if host else ""))
        await self.refresh_access()
        await self._p.dicom.access_changed()
        return {"ae_title": ae_title, "host": host, "origin": "api", action: True}

    async def peers(self, action: str, ae_title: str = "", host: str = "",
                    port: int = 0) -> Any:
        admin: AdminRepository = self._need(self._p.admin)
        if action == "list":
            return ([{"ae_title": p.ae_title, "host": p.host, "port": p.port,
                      "origin": "config"} for p in self._cfg.peers]
                    + [{"ae_title": p.ae_title, "host": p.host, "port": p.port,
                        "origin": "api"} for p in await admin.peers()])
        ae_title = _ae_title(ae_title)
        if self._cfg.peer(ae_title) is not None:
            raise ConflictingRequest(f"peer {ae_title!r} is in the config file "
                                     f"({self._cfg.source}); change it there")
        if action == "add":
            await admin.add_peer(ae_title, check_host(host), port)
        elif not await admin.remove_peer(ae_title):
            raise NotFound(f"peer {ae_title!r} was not added through the API")
        await self.refresh_access()
        await self._p.dicom.access_changed()
        return {"ae_title": ae_title, "origin": "api", action: True}

    async def refresh_access(self) -> None:
        """Re-read the API's AE titles and peers from the index: after a change made
        here, and every `ADMIN_REFRESH_S` for changes made through another node."""
        admin = self._p.admin
        if admin is None:
            return
        entries = tuple(AccessEntry(r.ae_title, r.host) for r in await admin.ae_titles())
        self._p.dicom.policy.set_api_entries(entries)
        self._api_peers = {p.ae_title: PeerConfig(p.ae_title, p.host, p.port)
                           for p in await admin.peers()}


class AdminRefresh(PeriodicTask):
    """Every `ADMIN_REFRESH_S`, the API's AE titles and peers as the index has them now:
    an entry added or removed through another node or worker takes effect here within
    that bound (the only copy of shared state this process keeps; docs/architecture.md)."""

    name = "admin-refresh"

    def __init__(self, control: ServerControl, interval_s: float = ADMIN_REFRESH_S) -> None:
        super().__init__(interval_s)
        self._control = control

    async def tick(self) -> None:
        try:
            await self._control.refresh_access()
        except Exception as exc:  # the index is down: keep the last entries, retry
            log.warning("admin.refresh_failed", error=str(exc))


def _configured_titles(cfg: Config) -> dict[str, dict[str, Any]]:
    """The config file's allowed calling AEs by title, as the API lists them."""
    out: dict[str, dict[str, Any]] = {}
    for entry in cfg.access_control.allowed_ae_titles:
        if isinstance(entry, AllowedAE):
            out[entry.ae_title.strip()] = {"ae_title": entry.ae_title.strip(),
                                           "host": ", ".join(entry.hosts), "tls": entry.tls}
        else:
            out[entry.strip()] = {"ae_title": entry.strip(), "host": ""}
    return out


def _ip_address(value: str) -> str:
    """The peer address an access entry is bound to: compared with the connection's IP."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise InvalidRequest(f"host: {value!r} is not an IP address") from None


def _ae_title(value: str) -> str:
    if not is_valid_ae_title(value):
        raise InvalidRequest(f"ae_title: {value!r} is not a valid AE title "
                             "(1-16 printable ASCII characters, no backslash)")
    return value.strip()
