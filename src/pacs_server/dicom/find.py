"""Query/Retrieve C-FIND SCP (PS3.4 C.4.1), Patient Root and Study Root.

Results stream: each batch crosses the bridge as soon as the index produced it, and a
C-CANCEL stops the iteration (and closes the database cursor) at the next result.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Generator, Iterator
from typing import Any

import structlog
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import evt
from pynetdicom.events import Event

from pacs_server.dicom.bridge import LoopBridge
from pacs_server.dicom.identifiers import QR_FIND, parse_identifier
from pacs_server.dicom.service import DicomService, Operation, contexts_for
from pacs_server.dicom.status import CANCEL, PENDING, SUCCESS, Service
from pacs_server.metrics import Metrics
from pacs_server.services.query import FindRequest, QueryService

log = structlog.get_logger(__name__)

FIND_MODELS = frozenset(str(uid) for uid in QR_FIND)


def combined_requested(event: Event, sop_class: str) -> bool:
    """Did the SCU ask for combined date-time matching (extended negotiation byte 2)?"""
    info = (getattr(event.assoc.requestor, "sop_class_extended", None) or {}).get(sop_class)
    return info is not None and len(info) > 1 and info[1] == 1


def negotiate_extended(info: bytes) -> bytes:
    """SOP Class Extended Negotiation for the Q/R FIND models (PS3.4 C.5.1.1):
    relational queries yes, combined date-time matching yes, fuzzy names and time-zone
    adjustment no."""
    reply = bytes([1, 1 if len(info) > 1 and info[1] == 1 else 0, 0, 0])
    return reply[:max(len(info), 1)]


def stream_pending(event: Event, batches: Any,
                   on_cancel: Callable[[int], None]) -> Generator[tuple[int, Any], None,
                                                                  tuple[int, bool]]:
    """Yield (0xFF00, identifier) per result of `batches` (a bridge iterator of lists
    of Datasets, or of encoded identifiers);
    after a C-CANCEL call `on_cancel(sent)`, yield (0xFE00, None) instead and stop:
    the service class sends that response and never resumes the generator, so
    anything to say about the cancel is said before. Returns (sent, cancelled);
    the iterator (and the database cursor behind it) is closed either way."""
    sent = 0
    try:
        for batch in batches:
            for ds in batch:
                if event.is_cancelled:
                    on_cancel(sent)
                    yield CANCEL, None
                    return sent, True
                sent += 1
                yield PENDING, ds
    finally:
        batches.close()
    return sent, False


def encoded_implicit(event: Event) -> bool | None:
    """Whether answers go out encoded in Implicit (True) or Explicit (False) VR Little
    Endian, the syntaxes services/answers.py writes (dicom/find_scp.py sends the bytes
    as they are); None: as Datasets, encoded by pydicom (Deflated, Big Endian)."""
    syntax = event.context.transfer_syntax
    if syntax in (ImplicitVRLittleEndian, ExplicitVRLittleEndian):
        return syntax == ImplicitVRLittleEndian
    return None


def answer_batches(event: Event, queries: QueryService,
                   req: FindRequest) -> AsyncIterator[Any]:
    """The answers in batches: already encoded (bytes) where `encoded_implicit` says
    so, else as Datasets."""
    implicit = encoded_implicit(event)
    if implicit is not None:
        return queries.find_encoded(req, implicit_vr=implicit)
    return queries.find(req)


def handle_find(event: Event, queries: QueryService, bridge: LoopBridge,
                metrics: Metrics) -> Iterator[tuple[Any, Any]]:
    """Yields (0xFF00, identifier) per match, then 0x0000; or 0xFE00 after C-CANCEL.

    Failures raised here are mapped by the handler wrapper: 0xA900 invalid level or
    identifier, 0xA700 too many matches or index unavailable, 0xC311 unexpected error.
    """
    sop_class = str(event.request.AffectedSOPClassUID)
    req = parse_identifier(event.identifier, sop_class,
                           combined_datetime=combined_requested(event, sop_class))
    queries.validate(req)
    batches = bridge.iterate(answer_batches(event, queries, req))
    sent, cancelled = yield from stream_pending(
        event, batches, lambda sent: log.info("c_find.cancelled", qr_level=req.level,
                                              sent=sent))
    if cancelled:
        return
    metrics.find_matches.labels(req.level).inc(sent)
    log.info("c_find.done", model=req.model, qr_level=req.level, matches=sent)
    yield SUCCESS, None


def service(queries: QueryService, bridge: LoopBridge, metrics: Metrics) -> DicomService:
    """C-FIND on the Patient Root and Study Root FIND models."""
    return DicomService(
        name="Query/Retrieve FIND",
        contexts=contexts_for(QR_FIND),
        operations=(Operation(evt.EVT_C_FIND,
                              lambda event: handle_find(event, queries, bridge, metrics),
                              Service.C_FIND, "C-FIND", FIND_MODELS),),
        extended_negotiation={uid: negotiate_extended for uid in FIND_MODELS},
    )
