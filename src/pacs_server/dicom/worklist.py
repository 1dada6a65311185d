"""Modality Worklist C-FIND SCP (Modality Worklist Information Model - FIND, PS3.4 K).

Results stream like Q/R C-FIND: each batch crosses the bridge as the index produces it,
and a C-CANCEL stops the iteration (and closes the database cursor) at the next result.
Answers are encoded once, as for Q/R (services/worklist_items.py, services/answers.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import structlog
from pynetdicom import evt
from pynetdicom.events import Event

from pacs_server.dicom.bridge import LoopBridge
from pacs_server.dicom.find import encoded_implicit, stream_pending
from pacs_server.dicom.identifiers import WORKLIST
from pacs_server.dicom.service import Context, DicomService, Operation
from pacs_server.dicom.status import SUCCESS, Service
from pacs_server.services.worklist import WorklistService, parse_query

log = structlog.get_logger(__name__)

MWL_FIND = str(WORKLIST)


def combined_requested(event: Event) -> bool:
    """Did the SCU ask for combined date-time matching? For the worklist model that is
    byte 1 of the Service-class-application-information (PS3.4 K.4.1.3.1)."""
    info = (getattr(event.assoc.requestor, "sop_class_extended", None) or {}).get(MWL_FIND)
    return info is not None and len(info) > 0 and info[0] == 1


def negotiate_extended(info: bytes) -> bytes:
    """PS3.4 K.4.1.3.1: combined date-time matching yes; fuzzy semantic matching of
    person names and time-zone adjustment no."""
    reply = bytes([1 if info[:1] == b"\x01" else 0, 0, 0])
    return reply[:max(len(info), 1)]


def handle_find(event: Event, worklist: WorklistService,
                bridge: LoopBridge) -> Iterator[tuple[Any, Any]]:
    """Yields (0xFF00, identifier) per matching item, then 0x0000; 0xFE00 after C-CANCEL.

    Failures raised here are mapped by the handler wrapper: 0xA900 invalid identifier,
    0xA700 index unavailable, 0xC311 unexpected error.
    """
    query = parse_query(event.identifier, combined_datetime=combined_requested(event))
    implicit = encoded_implicit(event)
    found = worklist.find(query) if implicit is None else \
        worklist.find_encoded(query, implicit_vr=implicit)
    sent, cancelled = yield from stream_pending(
        event, bridge.iterate(found), lambda sent: log.info("mwl_find.cancelled", sent=sent))
    if cancelled:
        return
    log.info("mwl_find.done", matches=sent)
    yield SUCCESS, None


def service(worklist: WorklistService, bridge: LoopBridge) -> DicomService:
    """C-FIND on the Modality Worklist Information Model."""
    return DicomService(
        name="Modality Worklist FIND",
        contexts=(Context(MWL_FIND),),
        operations=(Operation(evt.EVT_C_FIND,
                              lambda event: handle_find(event, worklist, bridge),
                              Service.WORKLIST, "MWL C-FIND", frozenset({MWL_FIND})),),
        extended_negotiation={MWL_FIND: negotiate_extended},
    )
