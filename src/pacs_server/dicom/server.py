"""Build the Application Entity, bind the service handlers, run and stop the listener.

The listener runs pynetdicom's ThreadedAssociationServer in its own thread; each
association gets a thread of its own, and handlers reach the loop only via LoopBridge.
"""

from __future__ import annotations

import copy
import errno
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any

import structlog
from pydicom import config as pydicom_config
from pydicom.uid import (
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, _config, evt
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from pacs_server import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from pacs_server.config import Config, PeerConfig
from pacs_server.dicom.associations import AssociationTracker
from pacs_server.dicom.bridge import LoopBridge
from pacs_server.dicom.echo import handle_echo
from pacs_server.dicom.find import handle_find, handle_sop_extended
from pacs_server.dicom.get import handle_get
from pacs_server.dicom.identifiers import QR_FIND, QR_GET, QR_MOVE
from pacs_server.dicom.move import handle_move
from pacs_server.dicom.store import handle_store
from pacs_server.errors import StartupError
from pacs_server.metrics import Metrics
from pacs_server.services.archive import ArchiveService
from pacs_server.services.query import QueryService
from pacs_server.services.retrieve import RetrieveService
from pacs_server.sop_classes import resolve_storage_classes

log = structlog.get_logger(__name__)

# Stream every received dataset to a file instead of memory (large instances), and keep
# patient identifiers out of pynetdicom's own logs.
_config.STORE_RECV_CHUNKED_DATASET = True
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False

# pydicom checks every value it reads against the standard's regular expressions (each UID
# pynetdicom decodes from a PDU, each indexed header value) only to emit Python warnings;
# nothing in the server acts on them. The checks that matter are ours (storage/layout.py
# for anything that names a file, services/ingest.py for what is indexed) and pynetdicom's
# (UID length, empty values). Skipping pydicom's cuts the decode of storescu's
# A-ASSOCIATE-RQ (128 presentation contexts) from 6.7-10.5 to 4.5 ms.
pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE

# Every transfer syntax pydicom knows: stored as received, never transcoded on ingest.
# pynetdicom accepts the first of *our* syntaxes that the requestor proposed, so the
# order is our preference: the sender's compressed encoding first (no decompression at
# the modality, the original pixels are kept), then Explicit VR Little Endian (keeps
# VRs of private elements), then the rest of the uncompressed family.
_UNCOMPRESSED_ORDER = [ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                       DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian]
TRANSFER_SYNTAXES = [str(ts) for ts in AllTransferSyntaxes if ts not in _UNCOMPRESSED_ORDER] \
    + [str(ts) for ts in _UNCOMPRESSED_ORDER]


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


@dataclass
class Services:
    """What the handlers need, built by the app and handed over once. Query/Retrieve
    is absent when there is no index (store_scp without --index-db)."""

    archive: ArchiveService
    bridge: LoopBridge
    metrics: Metrics
    queries: QueryService | None = None
    retrieve: RetrieveService | None = None


class DicomServer:
    """One listening AE; `start()` binds, `stop()` drains then aborts."""

    def __init__(self, cfg: Config, services: Services) -> None:
        self._cfg = cfg
        self._svc = services
        self.tracker = AssociationTracker(services.metrics)
        self.ae = self._build_ae(cfg)
        self._server: ThreadedAssociationServer | None = None
        self._previous_tempdir: str | None = None

    def _build_ae(self, cfg: Config) -> AE:
        s = cfg.server
        ae = AE(ae_title=s.ae_title)
        ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        ae.maximum_associations = s.max_associations
        ae.maximum_pdu_size = s.max_pdu_size
        ae.acse_timeout = s.acse_timeout
        ae.dimse_timeout = s.dimse_timeout
        ae.network_timeout = s.idle_timeout   # pynetdicom's idle timer aborts silent peers
        ae.require_called_aet = s.require_called_ae_title
        self.apply_access_control(cfg, ae)
        ae.connection_timeout = min(s.acse_timeout, 10.0)  # C-MOVE to an unreachable peer
        ae.add_supported_context(Verification, TRANSFER_SYNTAXES)
        for uid in resolve_storage_classes(cfg.storage.accepted_sop_classes):
            # scp_role lets a C-GET SCU take the Storage SCP role (PS3.7 D.3.3.4).
            ae.add_supported_context(uid, TRANSFER_SYNTAXES, scu_role=False, scp_role=True)
        if self._svc.queries is not None:
            for uid in [*QR_FIND, *QR_MOVE, *QR_GET]:
                ae.add_supported_context(uid, TRANSFER_SYNTAXES)
        return ae

    def apply_access_control(self, cfg: Config, ae: AE | None = None) -> None:
        """Set the calling-AE whitelist (reloadable: SIGHUP calls this again)."""
        ae = ae or self.ae
        titles = cfg.access_control.allowed_ae_titles
        ae.require_calling_aet = [] if "*" in titles else list(titles)

    def handlers(self) -> list[tuple[Any, ...]]:
        svc = self._svc
        return [
            *self.tracker.handlers(),
            (evt.EVT_C_ECHO, handle_echo, [self.tracker]),
            (evt.EVT_C_STORE, handle_store, [svc.archive, svc.bridge, self.tracker, svc.metrics]),
            *self._qr_handlers(),
        ]

    def _qr_handlers(self) -> list[tuple[Any, ...]]:
        svc = self._svc
        if svc.queries is None or svc.retrieve is None:
            return []
        return [
            (evt.EVT_SOP_EXTENDED, handle_sop_extended),
            (evt.EVT_C_FIND, handle_find, [svc.queries, svc.bridge, self.tracker, svc.metrics]),
            (evt.EVT_C_GET, handle_get, [svc.retrieve, svc.bridge, self.tracker, svc.metrics]),
            (evt.EVT_C_MOVE, handle_move, [svc.retrieve, svc.bridge, self.peer,
                                           self._cfg.server.max_pdu_size, self.tracker,
                                           svc.metrics]),
        ]

    def peer(self, ae_title: str) -> PeerConfig | None:
        """A C-MOVE destination from the current (reloadable) peers list."""
        return self._cfg.peer(ae_title)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def start(self) -> int:
        """Bind and serve in a background thread; returns the bound port."""
        # pynetdicom writes incoming datasets with tempfile; keep them on the archive's
        # filesystem (not a RAM-backed /tmp) and inside a directory we clean at start.
        self._previous_tempdir = tempfile.tempdir
        tempfile.tempdir = str(self._svc.archive.files.incoming)
        s = self._cfg.server
        try:
            server = self.ae.start_server((s.host, s.port), block=False,
                                          evt_handlers=self.handlers(),
                                          contexts=shared_contexts(self.ae.supported_contexts))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(f"port {s.port} on {s.host} is already in use") from None
            if exc.errno == errno.EACCES:
                raise StartupError(f"no permission to listen on {s.host}:{s.port}") from None
            raise StartupError(f"cannot listen on {s.host}:{s.port}: {exc.strerror}") from None
        assert server is not None
        self._server = server
        return self.port

    def active(self) -> list[Any]:
        return list(self._server.active_associations) if self._server else []

    def stop_accepting(self) -> None:
        """Close the listening socket; established associations continue."""
        if self._server is not None:
            self._server.shutdown()
            if tempfile.tempdir == str(self._svc.archive.files.incoming):
                tempfile.tempdir = self._previous_tempdir

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

    def reconfigure(self, cfg: Config) -> None:
        """Take a reloaded config (peers, query settings) for later associations."""
        self._cfg = cfg
