"""Query/Retrieve C-GET SCP (PS3.4 C.4.3): sub-operations on the same association.

The SCU must have negotiated the SCP role for the storage classes it wants; pynetdicom
counts completed/failed/warning sub-operations and builds the final status (0x0000,
0xB000 with the Failed SOP Instance UID List, or 0xA702 when all failed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import structlog
from pynetdicom import evt
from pynetdicom.events import Event

from pacs_server.dicom.bridge import LoopBridge
from pacs_server.dicom.identifiers import QR_GET
from pacs_server.dicom.service import DicomService, Operation, contexts_for
from pacs_server.dicom.status import Service
from pacs_server.dicom.suboperations import resolve, suboperations
from pacs_server.metrics import Metrics
from pacs_server.services.retrieve import RetrieveService

log = structlog.get_logger(__name__)


def handle_get(event: Event, retrieve: RetrieveService, bridge: LoopBridge,
               metrics: Metrics, transcode: bool = True) -> Iterator[Any]:
    """Yields the sub-operation count, then (0xFF00, dataset) per instance.

    An invalid identifier (0xA900) or an index failure (0xA701) is raised and mapped by
    the handler wrapper, which yields the count pynetdicom needs first.
    """
    req, refs = resolve(event, retrieve, bridge)
    log.info("c_get.started", qr_level=req.level, instances=len(refs))
    yield len(refs)
    yield from suboperations(event, "C-GET", refs, retrieve, metrics, transcode)


def service(retrieve: RetrieveService, bridge: LoopBridge, metrics: Metrics,
            transcode: Callable[[], bool] = lambda: True) -> DicomService:
    """C-GET on the Patient Root and Study Root GET models.

    `transcode` reads the current (reloadable) `retrieve.transcode`.
    """
    return DicomService(
        name="Query/Retrieve GET",
        contexts=contexts_for(QR_GET),
        operations=(Operation(evt.EVT_C_GET,
                              lambda event: handle_get(event, retrieve, bridge, metrics,
                                                       transcode()),
                              Service.C_GET, "C-GET",
                              frozenset(str(uid) for uid in QR_GET)),),
    )
