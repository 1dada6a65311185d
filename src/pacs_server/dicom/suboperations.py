"""The C-STORE sub-operation stream shared by C-GET and C-MOVE (PS3.4 C.4.2, C.4.3).

pynetdicom sends each yielded instance and keeps the remaining/completed/failed/warning
counts; this generator decides what to yield: each instance as a `StoredFile` (sent from
its archived file, converted only when the peer takes none of its stored syntax:
dicom/transport.py), or Cancel once the SCU sent C-CANCEL. An instance whose file is
gone still goes out as a `StoredFile`: its send fails, so its UID lands in the Failed
SOP Instance UID List.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import structlog
from pynetdicom.events import Event

from pacs_server.dicom.bridge import LoopBridge
from pacs_server.dicom.file_sending import StoredFile
from pacs_server.dicom.identifiers import parse_identifier
from pacs_server.dicom.status import CANCEL, PENDING
from pacs_server.metrics import Metrics
from pacs_server.services.query import FindRequest
from pacs_server.services.retrieve import RetrieveService, StoredRef

log = structlog.get_logger(__name__)


def resolve(event: Event, retrieve: RetrieveService,
            bridge: LoopBridge) -> tuple[FindRequest, list[StoredRef]]:
    """The request's identifier, decoded, and the instances it selects.

    Raises:
        PacsError: the identifier is invalid or the index did not answer.
    """
    req = parse_identifier(event.identifier, str(event.request.AffectedSOPClassUID))
    return req, bridge.run(retrieve.resolve(req))


def suboperations(event: Event, service: str, refs: list[StoredRef],
                  retrieve: RetrieveService, metrics: Metrics,
                  transcode: bool = True) -> Iterator[Any]:
    """Yield (0xFF00, StoredFile) per instance, or (0xFE00, None) after a C-CANCEL.

    Args:
        service: "C-GET" or "C-MOVE", for logs and metrics.
        transcode: whether an instance may be converted for a peer that does not take
            its stored transfer syntax (`retrieve.transcode`).
    """
    for ref, path, present in retrieve.files(refs):
        if event.is_cancelled:
            yield CANCEL, None
            return
        if not present:
            log.error("retrieve.unreadable", service=service,
                      sop_instance_uid=ref.sop_instance_uid, error="file missing")
        metrics.retrieved.labels(service).inc()
        metrics.bytes_sent.inc(ref.size)
        yield PENDING, StoredFile(path, ref.sop_class_uid, ref.sop_instance_uid,
                                  ref.transfer_syntax_uid, transcode)
