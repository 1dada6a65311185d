"""Query/Retrieve C-GET SCP (PS3.4 C.4.3): sub-operations on the same association.

The SCU must have negotiated the SCP role for the storage classes it wants; pynetdicom
counts completed/failed/warning sub-operations and builds the final status (0x0000,
0xB000 with the Failed SOP Instance UID List, or 0xA702 when all failed).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import structlog
from pynetdicom.events import Event

from pacs_server.dicom.associations import AssociationTracker
from pacs_server.dicom.bridge import LoopBridge
from pacs_server.dicom.status import Service
from pacs_server.dicom.suboperations import refused, resolve, suboperations
from pacs_server.errors import PacsError
from pacs_server.metrics import Metrics
from pacs_server.services.retrieve import RetrieveService

log = structlog.get_logger(__name__)


def handle_get(event: Event, retrieve: RetrieveService, bridge: LoopBridge,
               tracker: AssociationTracker, metrics: Metrics) -> Iterator[Any]:
    """Yields the sub-operation count, then (0xFF00, dataset) per instance."""
    try:
        req, refs = resolve(event, retrieve, bridge)
    except PacsError as exc:
        status = refused(event, Service.C_GET, tracker, exc)
        yield 1                     # pynetdicom wants a count before any status
        yield status, None
        return
    log.info("c_get.started", qr_level=req.level, instances=len(refs))
    yield len(refs)
    yield from suboperations(event, "C-GET", refs, retrieve, tracker, metrics)
