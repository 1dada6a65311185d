"""Query/Retrieve C-MOVE SCP (PS3.4 C.4.2): sub-operations over a new association to a
configured peer. Unknown destinations get 0xA801 at once; an unreachable one 0xA801
after the connection attempt (bounded by the AE's connection timeout)."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import structlog
from pynetdicom import build_context, evt
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification

from pacs_server.config import PeerConfig
from pacs_server.dicom.associations import set_nodelay
from pacs_server.dicom.bridge import LoopBridge
from pacs_server.dicom.identifiers import QR_MOVE, parse_identifier
from pacs_server.dicom.service import DicomService, Operation, contexts_for
from pacs_server.dicom.status import Service
from pacs_server.dicom.suboperations import suboperations
from pacs_server.errors import UnknownDestination
from pacs_server.metrics import Metrics
from pacs_server.services.query import FindRequest
from pacs_server.services.retrieve import RetrieveService, StoredRef
from pacs_server.services.transcode import FALLBACKS

log = structlog.get_logger(__name__)

MAX_CONTEXTS = 128


@dataclass(frozen=True)
class MovePlan:
    """What a C-MOVE request asks for, checked: the destination and the instances."""

    peer: PeerConfig
    req: FindRequest
    refs: list[StoredRef]


def plan_move(event: Event, retrieve: RetrieveService, bridge: LoopBridge,
              peer_of: Callable[[str], PeerConfig | None]) -> MovePlan:
    """The destination, the identifier and the instances, before anything is opened.

    Raises:
        UnknownDestination: not a configured peer, or one that needs TLS while TLS is
            off (0xA801).
        InvalidQuery: the identifier is invalid for its level (0xA900).
        IndexUnavailable: the index did not answer (0xA701).
    """
    dest = str(event.move_destination or "").strip()
    peer = peer_of(dest)
    if peer is None:
        raise UnknownDestination(f"move destination {dest!r} is not a configured peer")
    req = parse_identifier(event.identifier, str(event.request.AffectedSOPClassUID))
    retrieve.check(req)
    return MovePlan(peer, req, bridge.run(retrieve.resolve(req)))


class _Planned(threading.local):
    """The plan the precheck made, for the handler that runs next in the same thread
    on the same request (keyed by association and Message ID)."""

    key: tuple[int, int] | None = None
    plan: MovePlan | None = None

    def put(self, event: Event, plan: MovePlan) -> None:
        self.key, self.plan = _request_key(event), plan

    def take(self, event: Event) -> MovePlan | None:
        plan = self.plan if self.key == _request_key(event) else None
        self.key = self.plan = None
        return plan


def _request_key(event: Event) -> tuple[int, int]:
    return id(event.assoc), int(event.request.MessageID or 0)


_planned = _Planned()


def handle_move(event: Event, retrieve: RetrieveService, bridge: LoopBridge,
                peer_of: Callable[[str], PeerConfig | None], max_pdu: int,
                metrics: Metrics, transcode: bool = True,
                tls: Callable[[], ssl.SSLContext | None] = lambda: None) -> Iterator[Any]:
    """Yields the destination, the sub-operation count, then (0xFF00, dataset) each.

    The precheck (`precheck_move`, run by dicom/transport.py before pynetdicom's SCP)
    has refused an unknown destination, an invalid identifier and an index failure
    with their own statuses, before any association; its plan is used here.
    """
    plan = _planned.take(event) or plan_move(event, retrieve, bridge, peer_of)
    peer, refs = plan.peer, plan.refs
    transport = _transport(peer, tls)
    log.info("c_move.started", destination=peer.ae_title, qr_level=plan.req.level,
             instances=len(refs), tls=peer.tls)
    yield peer.host, peer.port, {
        "contexts": proposed_contexts(refs, transcode),
        "evt_handlers": [(evt.EVT_CONN_OPEN, set_nodelay)],
        "max_pdu": max_pdu,
        **transport,
    }
    yield len(refs)
    yield from suboperations(event, "C-MOVE", refs, retrieve, metrics, transcode)


def precheck_move(event: Event, retrieve: RetrieveService, bridge: LoopBridge,
                  peer_of: Callable[[str], PeerConfig | None],
                  tls: Callable[[], ssl.SSLContext | None]) -> None:
    """Everything that can refuse a C-MOVE before its destination is associated with
    (PS3.4 C.4.2.1.5): raises as `plan_move` does, else keeps the plan for the handler."""
    plan = plan_move(event, retrieve, bridge, peer_of)
    _transport(plan.peer, tls)
    _planned.put(event, plan)


def _transport(peer: PeerConfig,
               tls: Callable[[], ssl.SSLContext | None]) -> dict[str, Any]:
    """`tls_args` for ae.associate when the peer is marked `tls: true` (PS3.15 B.9): the
    client context of the moment (SIGHUP may have replaced it), verified against the
    peer's host name or address."""
    if not peer.tls:
        return {}
    ctx = tls()
    if ctx is None:
        raise UnknownDestination(f"move destination {peer.ae_title!r} needs TLS, and TLS "
                                 "is not enabled on this server")
    return {"tls_args": (ctx, peer.host)}


def service(retrieve: RetrieveService, bridge: LoopBridge,
            peer_of: Callable[[str], PeerConfig | None], max_pdu: int,
            metrics: Metrics, transcode: Callable[[], bool] = lambda: True,
            tls: Callable[[], ssl.SSLContext | None] = lambda: None) -> DicomService:
    """C-MOVE on the Patient Root and Study Root MOVE models, to configured peers
    (over TLS to those marked `tls: true`, with the context `tls()` returns).

    `transcode` reads the current (reloadable) `retrieve.transcode`.
    """
    def handle(event: Event) -> Iterator[Any]:
        return handle_move(event, retrieve, bridge, peer_of, max_pdu, metrics, transcode(),
                           tls)

    def precheck(event: Event) -> None:
        precheck_move(event, retrieve, bridge, peer_of, tls)

    return DicomService(
        name="Query/Retrieve MOVE",
        contexts=contexts_for(QR_MOVE),
        operations=(Operation(evt.EVT_C_MOVE, handle, Service.C_MOVE, "C-MOVE",
                              frozenset(str(uid) for uid in QR_MOVE), precheck=precheck),),
    )


def proposed_contexts(refs: list[StoredRef], transcode: bool = True) -> list[PresentationContext]:
    """The contexts the destination is offered: built from what the retrieve holds.

    One context per (SOP class, stored syntax) carrying that syntax alone, so that a
    destination accepting it receives the file as stored; with transcoding on, one more
    per SOP class offering Explicit and Implicit VR Little Endian, the fallbacks any
    Storage SCP takes (PS3.5 10.1) and services/transcode.py can produce from anything
    it can decode. Whatever the destination accepts is what is sent.

    Verification comes last, so that a destination taking none of the storage contexts
    still associates: its sub-operations then fail one by one (0xA702 when all do,
    PS3.4 C.4.2.1.5) instead of the whole C-MOVE failing as "destination unknown".
    """
    stored: dict[tuple[str, str], None] = {}
    for ref in refs:
        stored[(ref.sop_class_uid, ref.transfer_syntax_uid)] = None
    wanted: list[tuple[str, list[str]]] = [(sop, [ts]) for sop, ts in stored]
    if transcode:
        for sop in dict.fromkeys(sop for sop, _ in stored):
            fallbacks = [str(ts) for ts in FALLBACKS if (sop, str(ts)) not in stored]
            if fallbacks:
                wanted.append((sop, fallbacks))
    if len(wanted) > MAX_CONTEXTS - 1:
        # More than one association may propose (PS3.8 9.3.2.2: odd IDs 1-255): one
        # context per SOP class offering every syntax held for it, fallbacks last.
        merged: dict[str, list[str]] = {}
        for sop, syntaxes in wanted:
            merged.setdefault(sop, [])
            merged[sop].extend(t for t in syntaxes if t not in merged[sop])
        wanted = list(merged.items())[:MAX_CONTEXTS - 1]
    return [*(build_context(sop, syntaxes) for sop, syntaxes in wanted),
            build_context(Verification)]
